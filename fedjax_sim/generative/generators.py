"""Stand-in generators: pure, vmappable class-conditional samplers (specs/fedgc.md section 5).

The paper generates with Stable Diffusion (images) and ChatGPT (text) [V]; neither is available
offline, so these stand-ins reproduce what matters for the simulation (section 5.1) [D]: fitted
elsewhere (on the public split, disjoint from every client's data and the test set), a
controllable domain gap, a diversity knob (prompt modes, temperature), a fidelity-vs-diversity
knob (guidance strength), label noise, one shot, and one ``vmap`` over clients.

Every generator is ``Generator(name, sample)`` with

  sample(params, key, labels [G] int32, modes [G] int32, guide_x [G, D], guide_valid [G] bool,
         knobs: GenKnobs) -> x [G, D] float32

Row g draws from ``fold_in(key, g)`` only, so padding rows never change the others (`row_keys`).

in the flattened feature space D (the FedGC stage reshapes to the data's feature shape).
``params`` is a pytree of arrays; every generator's holds ``mean`` [D], ``std`` [D] (the public
split's marginal moments), ``gap`` [D] (a fixed +-1 pattern: the domain-gap direction),
``logits`` [C, S] (prompt-mode weights per class) and ``has_class`` [C] bool.

* ``gmm`` (default): per class an S-component diagonal Gaussian mixture fitted by k-means on the
  public split. Prompt: x~ = mu_u + (1 + w)(mu[c, s] - mu_u) + tau sigma[c, s] eps (the CFG
  analogue, mu_u the marginal mean). Guidance (SDEdit analogue, centred on the marginal mean m):
  x = m + sqrt(1 - s)(x0 - m) + sqrt(s)(x~ - m): s = 0 returns the guide, s = 1 ignores it.
* ``vae``: a small conditional VAE (Flax) trained on the public split with 10% label dropout
  (the null label = unconditional). Modes are k-means centres of each class's posterior means.
  Prompt: decode(centre[c, s] + tau spread eps, c) with CFG on the decoder output; guidance:
  z = sqrt(1 - s) enc(x0) + sqrt(s) z~.
* ``real``: a uniformly drawn public row of the class (the fidelity upper bound).
* ``noise``: class-independent Gaussian noise with the public marginal moments (lower bound).

Knobs every generator honours: ``label_noise`` (with probability eps a sample of a uniformly
drawn other class is emitted under the requested label) and ``domain_gap`` (x + delta * std * gap,
a fixed shift of every output). ``real`` and ``noise`` ignore modes, temperature, CFG and
guidance (they are references, not models).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_sim.config import FEDGC_CHOICES

GENERATORS = FEDGC_CHOICES["generator"]
NULL_SHRINK = 2.0  # gmm: component variances shrunk toward the class variance with this pseudo-count


class GenKnobs(NamedTuple):
    """strength s in [0, 1] (guidance: 0 copies the guide, 1 ignores it); cfg_weight w >= 0;
    temperature tau > 0; domain_gap delta >= 0; label_noise eps in [0, 1]; use_class_cond: False
    = real-data-only guidance (the fresh sample is unconditional)."""

    strength: float = 0.5
    cfg_weight: float = 0.0
    temperature: float = 1.0
    domain_gap: float = 0.0
    label_noise: float = 0.0
    use_class_cond: bool = True


class Generator(NamedTuple):
    name: str
    sample: Callable


# ---------------------------------------------------------------------------------------------
# shared pieces


def marginal(x: np.ndarray, y: np.ndarray, num_classes: int, key: jax.Array) -> dict:
    """The pieces every generator's params hold, from the public split x [P, D], y [P]."""
    x = np.asarray(x, np.float64)
    std = x.std(0)
    gap = np.where(np.asarray(jax.random.bernoulli(key, 0.5, (x.shape[1],))), 1.0, -1.0)
    counts = np.bincount(np.asarray(y), minlength=num_classes)
    return {"mean": jnp.asarray(x.mean(0), jnp.float32), "std": jnp.asarray(np.where(std > 0, std, 1e-3), jnp.float32),
            "gap": jnp.asarray(gap, jnp.float32), "has_class": jnp.asarray(counts > 0),
            "prior": jnp.asarray(counts / max(counts.sum(), 1), jnp.float32)}


def row_keys(key: jax.Array, rows: int) -> jax.Array:
    """[rows, 2] keys, row g's = ``fold_in(key, g)``: a row's sample does not depend on how many
    rows (padding included) are drawn with it."""
    return jax.vmap(lambda g: jax.random.fold_in(key, g))(jnp.arange(rows))


def noisy_label(key: jax.Array, label: jax.Array, eps, num_classes: int) -> jax.Array:
    """The class actually drawn for requested ``label``: with probability ``eps`` a uniformly
    drawn other class (the label itself is kept by the caller: label noise)."""
    k1, k2 = jax.random.split(key)
    other = (label + 1 + jax.random.randint(k2, (), 0, max(num_classes - 1, 1))) % num_classes
    return jnp.where(jax.random.uniform(k1) < eps, other, label).astype(jnp.int32)


def shift(params: dict, x: jax.Array, knobs: GenKnobs) -> jax.Array:
    """The domain gap: x + delta * std * gap."""
    return x + knobs.domain_gap * params["std"] * params["gap"]


def kmeans_modes(x: np.ndarray, modes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres [S, D], assignment [n]) of k-means with S = ``modes`` clusters on x [n, D]
    (fewer rows than S: each row its own centre, repeated to S)."""
    from sklearn.cluster import KMeans

    n = len(x)
    if n <= modes:
        reps = np.arange(modes) % max(n, 1)
        return (x[reps] if n else np.zeros((modes, x.shape[1]))), np.arange(n)
    km = KMeans(modes, n_init=4, random_state=seed).fit(x)
    return km.cluster_centers_, km.labels_


def _mixture(x: np.ndarray, y: np.ndarray, num_classes: int, modes: int, seed: int):
    """Per class k-means: centres [C, S, D], diagonal scales [C, S, D] (shrunk toward the class
    variance), log-weights [C, S] (log cluster sizes; absent classes: uniform)."""
    d = x.shape[1]
    means = np.zeros((num_classes, modes, d))
    scales = np.ones((num_classes, modes, d))
    logits = np.zeros((num_classes, modes))
    for c in range(num_classes):
        xc = x[y == c]
        if not len(xc):
            continue
        centres, assign = kmeans_modes(xc, modes, seed + c)
        class_var = xc.var(0) + 1e-4
        sizes = np.bincount(assign, minlength=modes).astype(np.float64) if len(xc) > modes else np.ones(modes)
        for s in range(modes):
            rows = xc[assign == s] if len(xc) > modes else xc[[s % len(xc)]]
            var = rows.var(0) if len(rows) > 1 else np.zeros(d)
            scales[c, s] = np.sqrt((len(rows) * var + NULL_SHRINK * class_var) / (len(rows) + NULL_SHRINK))
        means[c] = centres
        logits[c] = np.log(np.maximum(sizes, 1e-3))
    return means, scales, logits


# ---------------------------------------------------------------------------------------------
# gmm


def fit_gmm(x, y, num_classes: int, modes: int, key: jax.Array, **_) -> dict:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    means, scales, logits = _mixture(x, np.asarray(y), num_classes, modes, int(jax.random.randint(key, (), 0, 2**30)))
    return {**marginal(x, y, num_classes, key), "means": jnp.asarray(means, jnp.float32),
            "scales": jnp.asarray(scales, jnp.float32), "logits": jnp.asarray(logits, jnp.float32)}


def _gmm_sample(params, key, labels, modes, guide_x, guide_valid, knobs: GenKnobs):
    num_classes, num_modes, _ = params["means"].shape

    def one(key, label, mode, x0, guided):
        k_lab, k_eps, k_cls, k_mode = jax.random.split(key, 4)
        c = noisy_label(k_lab, label, knobs.label_noise, num_classes)
        mu, sd = params["means"][c, mode], params["scales"][c, mode]
        mu_u = params["mean"]
        cond = mu_u + (1.0 + knobs.cfg_weight) * (mu - mu_u)
        # unconditional draw (real-data-only guidance): class from the prior, mode from its weights
        cu = jax.random.categorical(k_cls, jnp.log(params["prior"] + 1e-12))
        su = jax.random.categorical(k_mode, params["logits"][cu])
        uncond = not knobs.use_class_cond
        centre = jnp.where(guided & uncond, params["means"][cu, su], cond)
        scale = jnp.where(guided & uncond, params["scales"][cu, su], sd)
        fresh = centre + knobs.temperature * scale * jax.random.normal(k_eps, mu.shape)
        m = params["mean"]
        s = knobs.strength
        mixed = m + jnp.sqrt(1.0 - s) * (x0 - m) + jnp.sqrt(s) * (fresh - m)
        return shift(params, jnp.where(guided, mixed, fresh), knobs)

    return jax.vmap(one)(row_keys(key, labels.shape[0]), labels, modes, guide_x, guide_valid)


# ---------------------------------------------------------------------------------------------
# vae


def _vae_module(dim: int, latent: int, num_classes: int, width: int = 256):
    import flax.linen as nn

    class CondVAE(nn.Module):
        """Encoder [x, onehot(c)] -> (mu, log var) [L]; decoder [z, onehot(c)] -> x [D]; label
        ``num_classes`` is the null (unconditional) label."""

        def setup(self):
            self.enc = nn.Dense(width)
            self.enc_out = nn.Dense(2 * latent)
            self.dec = nn.Dense(width)
            self.dec2 = nn.Dense(width)
            self.dec_out = nn.Dense(dim)

        def encode(self, x, c):
            h = nn.relu(self.enc(jnp.concatenate([x, jax.nn.one_hot(c, num_classes + 1)], -1)))
            mu, logvar = jnp.split(self.enc_out(h), 2, -1)
            return mu, jnp.clip(logvar, -8.0, 8.0)

        def decode(self, z, c):
            h = nn.relu(self.dec(jnp.concatenate([z, jax.nn.one_hot(c, num_classes + 1)], -1)))
            return self.dec_out(nn.relu(self.dec2(h)))

        def __call__(self, x, c, key):
            mu, logvar = self.encode(x, c)
            z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
            return self.decode(z, c), mu, logvar

    return CondVAE()


def fit_vae(x, y, num_classes: int, modes: int, key: jax.Array, steps: int = 2000, latent: int = 8,
            progress: bool = False, **_) -> dict:
    """Trains the conditional VAE on the public split (standardized pixels, Gaussian likelihood,
    beta = 1, Adam 1e-3, batch 64, 10% label dropout), then fits the prompt modes in z space."""
    import optax
    from tqdm.auto import tqdm

    x = np.asarray(x, np.float32).reshape(len(x), -1)
    y = np.asarray(y, np.int32)
    base = marginal(x, y, num_classes, key)
    mean, std = np.asarray(base["mean"]), np.asarray(base["std"])
    xs = jnp.asarray((x - mean) / std)
    ys = jnp.asarray(y)
    module = _vae_module(x.shape[1], latent, num_classes)
    k_init, k_train = jax.random.split(jax.random.fold_in(key, 1))
    net = module.init(k_init, xs[:1], ys[:1], k_init)
    opt = optax.adam(1e-3)
    opt_state = opt.init(net)

    def loss_fn(net, key):
        k_b, k_drop, k_z = jax.random.split(key, 3)
        idx = jax.random.randint(k_b, (64,), 0, xs.shape[0])
        xb, yb = xs[idx], ys[idx]
        yb = jnp.where(jax.random.uniform(k_drop, (64,)) < 0.1, num_classes, yb)
        rec, mu, logvar = module.apply(net, xb, yb, k_z)
        nll = 0.5 * jnp.sum(jnp.square(rec - xb), -1)
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mu) - 1.0 - logvar, -1)
        return jnp.mean(nll + kl)

    @jax.jit
    def chunk(net, opt_state, key):
        def step(carry, k):
            net, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(net, k)
            updates, opt_state = opt.update(grads, opt_state, net)
            return (optax.apply_updates(net, updates), opt_state), loss
        (net, opt_state), losses = jax.lax.scan(step, (net, opt_state), jax.random.split(key, 100))
        return net, opt_state, losses[-1]

    chunks = max(1, -(-steps // 100))
    bar = tqdm(total=chunks * 100, desc="fedgc: training the VAE generator", disable=not progress, leave=False)
    for i in range(chunks):
        net, opt_state, loss = chunk(net, opt_state, jax.random.fold_in(k_train, i))
        bar.update(100)
        bar.set_postfix(loss=f"{float(loss):.2f}")
    bar.close()
    mu, _ = module.apply(net, xs, ys, method=lambda m, a, b: m.encode(a, b))
    mu = np.asarray(mu, np.float64)
    centres, spreads, logits = _mixture(mu, y, num_classes, modes, int(jax.random.randint(key, (), 0, 2**30)))
    return {**base, "net": net, "centres": jnp.asarray(centres, jnp.float32),
            "spreads": jnp.asarray(spreads, jnp.float32), "logits": jnp.asarray(logits, jnp.float32)}


def _vae_sample(params, key, labels, modes, guide_x, guide_valid, knobs: GenKnobs):
    num_classes, _, latent = params["centres"].shape
    dim = params["mean"].shape[0]
    module = _vae_module(dim, latent, num_classes)
    mean, std = params["mean"], params["std"]
    null = jnp.int32(num_classes)

    def one(key, label, mode, x0, guided):
        k_lab, k_eps, k_cls, k_mode = jax.random.split(key, 4)
        c = noisy_label(k_lab, label, knobs.label_noise, num_classes)
        cu = jax.random.categorical(k_cls, jnp.log(params["prior"] + 1e-12))
        su = jax.random.categorical(k_mode, params["logits"][cu])
        uncond = guided & (not knobs.use_class_cond)
        cc = jnp.where(uncond, cu, c)
        ss = jnp.where(uncond, su, mode)
        fresh = params["centres"][cc, ss] + knobs.temperature * params["spreads"][cc, ss] * \
            jax.random.normal(k_eps, (latent,))
        z0, _ = module.apply(params["net"], ((x0 - mean) / std)[None], c[None],
                             method=lambda m, a, b: m.encode(a, b))
        s = knobs.strength
        z = jnp.where(guided, jnp.sqrt(1.0 - s) * z0[0] + jnp.sqrt(s) * fresh, fresh)
        dec = lambda lab: module.apply(params["net"], z[None], lab[None], method=lambda m, a, b: m.decode(a, b))[0]
        out_null = dec(null)
        out_cond = jnp.where(uncond, out_null, dec(c))
        out = out_null + (1.0 + knobs.cfg_weight) * (out_cond - out_null)
        return shift(params, mean + std * out, knobs)

    return jax.vmap(one)(row_keys(key, labels.shape[0]), labels, modes, guide_x, guide_valid)


# ---------------------------------------------------------------------------------------------
# references


def fit_real(x, y, num_classes: int, modes: int, key: jax.Array, **_) -> dict:
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    y = np.asarray(y, np.int32)
    order = np.argsort(y, kind="stable")
    counts = np.bincount(y, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return {**marginal(x, y, num_classes, key), "rows": jnp.asarray(x[order]),
            "starts": jnp.asarray(starts, jnp.int32), "counts": jnp.asarray(counts, jnp.int32),
            "logits": jnp.zeros((num_classes, modes), jnp.float32)}


def _real_sample(params, key, labels, modes, guide_x, guide_valid, knobs: GenKnobs):
    num_classes = params["counts"].shape[0]

    def one(key, label):
        k_lab, k_row = jax.random.split(key)
        c = noisy_label(k_lab, label, knobs.label_noise, num_classes)
        row = params["starts"][c] + jax.random.randint(k_row, (), 0, jnp.maximum(params["counts"][c], 1))
        return shift(params, params["rows"][row], knobs)

    return jax.vmap(one)(row_keys(key, labels.shape[0]), labels)


def fit_noise(x, y, num_classes: int, modes: int, key: jax.Array, **_) -> dict:
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    return {**marginal(x, y, num_classes, key), "logits": jnp.zeros((num_classes, modes), jnp.float32)}


def _noise_sample(params, key, labels, modes, guide_x, guide_valid, knobs: GenKnobs):
    d = params["mean"].shape[0]
    eps = jax.vmap(lambda k: jax.random.normal(k, (d,)))(row_keys(key, labels.shape[0]))
    return shift(params, params["mean"] + params["std"] * eps, knobs)


GENERATOR_FNS: dict[str, tuple[Callable, Callable]] = {
    "gmm": (fit_gmm, _gmm_sample), "vae": (fit_vae, _vae_sample),
    "real": (fit_real, _real_sample), "noise": (fit_noise, _noise_sample)}


def get(name: str) -> Generator:
    """The generator ``name`` (one of `GENERATORS`)."""
    if name not in GENERATOR_FNS:
        raise ValueError(f"unknown generator {name!r}; expected one of {GENERATORS}")
    return Generator(name, GENERATOR_FNS[name][1])


def fit(name: str, x, y, num_classes: int, modes: int, key: jax.Array, **kwargs) -> Any:
    """Fits generator ``name`` on the public split x [P, ...], y [P] (host side; returns params)."""
    if name not in GENERATOR_FNS:
        raise ValueError(f"unknown generator {name!r}; expected one of {GENERATORS}")
    return GENERATOR_FNS[name][0](x, y, num_classes, modes, key, **kwargs)
