"""The same MLP in PyTorch: forward, backward and one optimizer step agree within float32 tolerance.

PyTorch is a reference only (``pip install torch==2.13.0``); these tests skip without it.
"""
import numpy as np
import pytest

from mpisim.nn import MLP, BatchNorm1d, Linear, make_optimizer

torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install torch==2.13.0): reference tests")

SIZES = [20, 32, 16, 5]
TORCH_ACT = {"relu": torch.nn.ReLU, "leaky_relu": torch.nn.LeakyReLU, "sigmoid": torch.nn.Sigmoid,
             "tanh": torch.nn.Tanh, "gelu": torch.nn.GELU}


def torch_twin(model: MLP):
    """A torch.nn.Sequential with our parameters copied in (W transposed: torch stores (out, in))."""
    mods = []
    for layer in model.layers:
        if isinstance(layer, Linear):
            m = torch.nn.Linear(layer.d_in, layer.d_out)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(layer.params["W"].T.copy()))
                m.bias.copy_(torch.from_numpy(layer.params["b"].copy()))
        elif isinstance(layer, BatchNorm1d):
            m = torch.nn.BatchNorm1d(layer.C)
        else:
            m = TORCH_ACT[model.activation]()
        mods.append(m)
    return torch.nn.Sequential(*mods)


def torch_flat(model: MLP, net, *, grads: bool = False) -> np.ndarray:
    """torch's parameters (or their gradients) laid out like our flat vector."""
    out = np.zeros_like(model.params)
    tmods = list(net)
    for li, name, off, shape in model.slices:
        m = tmods[li]
        t = m.weight if name in ("W", "gamma") else m.bias      # W is stored transposed here
        t = t.grad if grads else t
        t = t.T if name == "W" else t
        out[off:off + int(np.prod(shape))] = t.detach().numpy().reshape(-1)
    return out


def data(B=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], B).astype(np.int64)


@pytest.mark.parametrize("activation", list(TORCH_ACT))
@pytest.mark.parametrize("batchnorm", [False, True])
def test_forward_backward_match_torch(activation, batchnorm):
    model = MLP(SIZES, activation=activation, batchnorm=batchnorm, seed=1)
    net = torch_twin(model)
    x, y = data()
    loss, _ = model.train_step(x, y)
    logits = net(torch.from_numpy(x))
    tloss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-5)
    np.testing.assert_allclose(model.forward(x, train=False), net.eval()(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.grads, torch_flat(model, net, grads=True), rtol=1e-4, atol=1e-6)
    if batchnorm:     # running statistics after one training batch (the eval forward above used them)
        for layer, m in zip(model.layers, net):
            if isinstance(layer, BatchNorm1d):
                np.testing.assert_allclose(layer.buffers["running_mean"], m.running_mean.numpy(), rtol=1e-5, atol=1e-7)
                np.testing.assert_allclose(layer.buffers["running_var"], m.running_var.numpy(), rtol=1e-5, atol=1e-7)


OPTS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01),
}


@pytest.mark.parametrize("name", list(OPTS))
def test_optimizer_steps_match_torch(name):
    """Three steps (so momentum and Adam's moments matter) give the same parameters as torch.

    No BatchNorm under Adam: the bias before a BatchNorm has a gradient of exactly 0 in theory, so
    both sides hold rounding noise there, and Adam's g / sqrt(v) blows noise up to a full step."""
    model = MLP(SIZES, activation="tanh", batchnorm=not name.startswith("adam"), seed=2)
    net = torch_twin(model)
    lr = 0.1 if name in ("sgd", "momentum", "nesterov") else 0.01
    opt = make_optimizer(name, model.params, model.grads, lr=lr, weight_decay=0.01, momentum=0.9)
    topt = OPTS[name](net.parameters())
    for step in range(3):
        x, y = data(seed=step)
        model.train_step(x, y)
        opt.step()
        topt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        topt.step()
    np.testing.assert_allclose(model.params, torch_flat(model, net), rtol=1e-4, atol=2e-6)
