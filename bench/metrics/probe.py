"""A linear probe in torch: multinomial logistic regression on standardised codes, full-batch L-BFGS.

The same model and objective as scikit-learn's ``StandardScaler`` + ``LogisticRegression(C=1)``
(lbfgs, multinomial): features standardised by the training mean and standard deviation (ddof 0;
a constant feature is left unscaled), and the mean cross-entropy plus ``||W||^2 / (2 C n)`` (the
intercept unpenalised) minimised in float64. The objective is strictly convex, so both reach the
same optimum; torch's L-BFGS with a strong-Wolfe line search runs on the codes' device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass(frozen=True)
class Probe:
    mean: Tensor
    scale: Tensor
    weight: Tensor  # (d, classes)
    bias: Tensor  # (classes,)
    n_iter: int
    converged: bool

    def predict(self, x: Tensor) -> Tensor:
        z = (x.to(self.mean) - self.mean) / self.scale
        return (z @ self.weight + self.bias).argmax(1)


def fit_logistic(
    x: Tensor, y: Tensor, num_classes: int, c: float = 1.0, max_iter: int = 1000, tol: float = 1e-4
) -> Probe:
    """Fit on ``x`` (n, d) with labels ``y`` (n,); stops when the largest gradient entry is below
    ``tol`` (scikit-learn's stopping rule and default, 1e-4: on 60,000 64-d vae-conv codes of
    Fashion-MNIST it converged in 346 iterations to a test accuracy 0.08 points from a fit that
    ran 1,000 iterations towards 1e-6, in a third of the time)."""
    x = x.detach().clone().double()  # a normal tensor, whatever mode made the codes
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    z = (x - mean) / scale
    y = y.to(x.device)
    n, d = z.shape
    onehot = F.one_hot(y, num_classes).to(z.dtype)
    picked = y[:, None]
    # one flat parameter vector [W (d x classes), b]; the loss and its gradient in closed form
    # (two matrix products and one exponential an evaluation, no autograd graph)
    theta = torch.zeros(d * num_classes + num_classes, dtype=z.dtype, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [theta],
        max_iter=max_iter,
        max_eval=2 * max_iter,
        tolerance_grad=tol,
        tolerance_change=1e-12,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        with torch.no_grad():
            weight, bias = theta[: d * num_classes].view(d, num_classes), theta[d * num_classes :]
            logits = torch.addmm(bias, z, weight)
            top = logits.amax(1, keepdim=True)
            e = (logits - top).exp_()
            total = e.sum(1, keepdim=True)
            lse = top + total.log()  # log-sum-exp of each row
            loss = (lse - logits.gather(1, picked)).mean() + weight.square().sum() / (2 * c * n)
            resid = e.div_(total).sub_(onehot).div_(n)  # softmax - onehot: d loss / d logits
            theta.grad = torch.cat([(z.T @ resid + weight / (c * n)).flatten(), resid.sum(0)])
        return loss

    opt.step(closure)
    grad = theta.grad.abs().max().item()
    weight, bias = theta.detach()[: d * num_classes].view(d, num_classes), theta.detach()[d * num_classes :]
    n_iter = int(opt.state[opt._params[0]]["n_iter"])
    return Probe(mean, scale, weight, bias, n_iter, grad <= tol)
