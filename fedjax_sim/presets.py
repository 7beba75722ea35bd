"""Paper presets: the hyper-parameters of a method's official code (or its paper), by name.

A preset is a named set of ``--set``-style values (dotted config fields, as accepted by
`fedjax_sim.config.set_field`) that puts the simulator in the experimental setting of a paper:
data partition, client population, local training, server aggregation, rounds. ``--preset NAME``
applies it and the run's config.json records the name (``preset`` field) next to the resulting
values, so a run says which setting it claims to reproduce.

Precedence, lowest to highest, as the CLI applies the layers:
  config defaults < preset < ``--config`` file < flags < ``--set``.
So a preset is a starting point: anything given explicitly wins over it.

A preset deliberately leaves ``algorithm`` unset: it is the *setting* under which a method and its
baselines are compared (``--preset fedrema --algorithm fedavg`` is the FedAvg baseline of
FedReMa's setting). Algorithm sections it fills (e.g. ``fedrema.*``) only matter to that algorithm.

Provenance. Every value carries a per-value provenance string (`Preset.provenance`) that keeps the
spec's source tag: **[C]** official code, **[P]** paper, **[verified]** checked in a public
repository, **[I]** the spec's (or this module's) inference. `Preset.source` names the documents;
`Preset.notes` lists, honestly, where the simulator cannot express the official setting or
chooses otherwise (and what was left unset because the sources do not give it).
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Mapping

from fedjax_sim import config as config_lib
from fedjax_sim.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Preset:
    """One named setting.

    name: the ``--preset`` name.
    description: one line for ``fedjax-sim list``.
    source: where the values come from (documents and sections).
    values: dotted config field -> value (applied with `config.set_field`, in this order).
    provenance: dotted config field -> its source tag and reference, one per value.
    notes: where the preset deviates from the source, or leaves something unset, and why.
    """

    name: str
    description: str
    source: str
    values: Mapping[str, Any]
    provenance: Mapping[str, str]
    notes: tuple[str, ...] = ()


def _preset(name: str, description: str, source: str,
            entries: list[tuple[str, Any, str]], notes: tuple[str, ...]) -> Preset:
    """Builds a Preset from (field, value, provenance) triples, so no value lacks a provenance."""
    keys = [k for k, _, _ in entries]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"preset {name!r} sets {', '.join(duplicates)} twice")
    # Read-only views: the registry is module state shared by every run in the process, so
    # applying or inspecting a preset must not be able to change it.
    return Preset(name, description, source,
                  MappingProxyType({k: v for k, v, _ in entries}),
                  MappingProxyType({k: p for k, _, p in entries}), tuple(notes))


# --------------------------------------------------------------------------------------------
# FedReMa (liangh68/FedReMa main.py defaults and generate_dataset.py; specs/fedrema.md §5.1-5.2)

_FEDREMA_SPEC = "specs/fedrema.md"

_FEDREMA_ENTRIES = [
    # run
    ("rounds", 500, f"[C] README example `-gr 500` ({_FEDREMA_SPEC} §5.1)"),
    ("eval_every", 1, f"[C] eval_gap 1 ({_FEDREMA_SPEC} §5.1)"),
    ("cohort", 0, f"[C] join ratio 1.0: all 20 clients every round ({_FEDREMA_SPEC} §5.1)"),
    ("seed", 1, f"[C] seed 1 for torch, numpy, random ({_FEDREMA_SPEC} §5.1)"),
    # data: the "by_s" partition
    ("data.num_clients", 20, f"[C] `-K 20`, hardcoded 20 clients ({_FEDREMA_SPEC} §5.1, §5.2)"),
    ("data.partition", "dominant_class", f"[C] generator \"by_s\" ({_FEDREMA_SPEC} §5.2)"),
    ("data.samples_per_client", 400,
     f"[C] `-npc 500 -tr 0.8`: 500 per client, 80% train = 400 training rows ({_FEDREMA_SPEC} "
     "§5.2; here samples_per_client counts training rows, see DataConfig)"),
    ("data.test_fraction", 0.2,
     f"[C] `-tr 0.8`: 20% of each client's rows are test, same label mix ({_FEDREMA_SPEC} §5.2)"),
    ("data.dominant_fraction", 0.2, f"[C] s = 0.2 of each client's samples IID ({_FEDREMA_SPEC} §5.2)"),
    ("data.dominant_classes", 3,
     f"[C] 3 dominant classes per group [0,1,2],[2,3,4],... ({_FEDREMA_SPEC} §5.2)"),
    ("data.with_replacement", True,
     f"[C] per-class cursors wrap around when a class block runs out ({_FEDREMA_SPEC} §5.2)"),
    # model: the split between the global body and the personal head
    ("model.head_layers", 2,
     f"[C] \"cnn\" head = Linear(1024->512), ReLU, Linear(512->K) ({_FEDREMA_SPEC} §2)"),
    # local training
    ("local.optimizer", "momentum", f"[C] SGD with momentum ({_FEDREMA_SPEC} §5.1)"),
    ("local.lr", 0.01, f"[C] SGD lr 0.01 ({_FEDREMA_SPEC} §5.1)"),
    ("local.momentum", 0.9, f"[C] momentum 0.9 ({_FEDREMA_SPEC} §5.1)"),
    ("local.weight_decay", 0.0, f"[C] no weight decay ({_FEDREMA_SPEC} §5.1)"),
    ("local.clip_norm", 10.0, f"[C] global L2 norm <= 10, every step ({_FEDREMA_SPEC} §5.1)"),
    ("local.epochs", 5, f"[C] 5 local epochs over the full local train set ({_FEDREMA_SPEC} §5.1)"),
    ("local.steps", 0, f"[C] epoch-based, not a fixed step count ({_FEDREMA_SPEC} §5.1)"),
    ("local.batch_size", 100, f"[C] batch 100 ({_FEDREMA_SPEC} §5.1)"),
    # server: the body is the sample-weighted mean; sgd(1.0) on the mean delta is exactly that
    ("server.optimizer", "sgd",
     f"[C] body = sample-weighted mean of client bodies ({_FEDREMA_SPEC} §4); sgd(1.0) on the "
     "mean delta returns that mean"),
    ("server.lr", 1.0, f"[C] as server.optimizer ({_FEDREMA_SPEC} §4)"),
    ("server.weighting", "samples", f"[C] weighted by train-sample count n_c ({_FEDREMA_SPEC} §4)"),
    # FedReMa's own hyper-parameters (used only by the fedrema* algorithms)
    ("fedrema.delta", 0.5, f"[C] CCP threshold delta 0.5, CLI `-del` ({_FEDREMA_SPEC} §3.3, §5.1)"),
    ("fedrema.sim_type", "probe", f"[C] sim_type 0, random uniform probe ({_FEDREMA_SPEC} §3.1, §5.1)"),
    ("fedrema.t_ref", 0.5, f"[C] reference client's softmax temperature 0.5 ({_FEDREMA_SPEC} §3.1)"),
    ("fedrema.t_peer", 1.0, f"[C] peers' softmax temperature 1 ({_FEDREMA_SPEC} §3.1)"),
    ("fedrema.probe_scale", 0.5, f"[C] probe z ~ Uniform[0, 0.5)^d ({_FEDREMA_SPEC} §3.1)"),
    ("fedrema.ablation", "none", f"[C] agg_type 0 = FedReMa ({_FEDREMA_SPEC} §7.14)"),
    ("fedrema.official_index_bug", False,
     f"[I] the code's head/weight index mismatch is a bug; the spec recommends the intended "
     f"semantics ({_FEDREMA_SPEC} §7.1)"),
    ("fedrema.official_inplace_mixing", False,
     f"[I] the code mixes heads in place; the spec recommends mixing the post-training copies "
     f"({_FEDREMA_SPEC} §7.2)"),
]

_FEDREMA_NOTES = (
    "algorithm is not set: this is the setting under which FedReMa and its baselines are "
    "compared; choose --algorithm fedrema (or fedavg, fedper, fedrep, head_avg, ...). The "
    "fedrema.* values only affect the fedrema* algorithms.",
    "data.dataset is not set: the official generator supports cifar10, mnist and fmnist (TFDS "
    "names cifar10, mnist, fashion_mnist) and its README example is cifar10; choose with --set "
    "data.dataset=cifar10. On the default digits pool (~144 training rows per class) 400 rows per "
    "client reuse training rows across clients (with_replacement, as the code's wrap-around would).",
    "Pool: the code merges the dataset's train and test splits and splits each client 80/20 "
    "afterwards; here only the train pool is partitioned (400 training rows per client) and each "
    "client's 100 test rows, with its own label mix, come from the disjoint test pool, so no test "
    "image is anyone's training image (on digits the ~360-row test pool is shared pro rata: ~18 "
    "per client). The label mix matches in expectation (80 IID + 320 dominant training rows).",
    "Class cursors start at 0 (the code: offset 2000, restart at 0 on overflow), so different "
    "images are picked. On cifar10/mnist at 400 training rows per client no class block runs out "
    "(about 1,000 rows of the busiest class are needed), so with_replacement changes nothing "
    "there; it only matters on small pools.",
    "Batching: the code uses drop_last, the simulator keeps a last partial batch. With exactly 400 "
    "training rows and batch 100 every epoch is 4 full batches (20 steps per round), identical; "
    "it differs only if samples_per_client or batch_size is changed so that 100 no longer divides it.",
    "Model: the code uses FedAvgCNN (5x5 VALID convs, d=1024) for mnist/fmnist and a simplified "
    "AlexNet with a 3-layer activation-free head (d=2304) for cifar10. model.name stays auto: cnn "
    "(SAME padding, d=3136) for mnist-like data, cifar_cnn (conv32-conv64-fc128) for cifar10, mlp "
    "for digits. The AlexNet variant and its 3-layer head cannot be expressed; model.head_layers=2 "
    "gives the code's cnn split (fc-ReLU-logits personal). Flax default init, not PyTorch's.",
    "Inputs are scaled to [0, 1] (the code normalizes with mean 0.5, std 0.5 to [-1, 1]); neither "
    "augments.",
    "Rounds: the code runs 501 loop iterations and evaluates before each one's training; 500 rounds "
    "with eval_every=1 scores the same 501 models (after 0..500 aggregations) -- the code's last "
    "training is never scored. The code reports the best pooled accuracy over rounds (spec §7.10).",
    "seed=1 is recorded for fidelity only: JAX's RNG streams (shuffles, probes) cannot reproduce "
    "PyTorch's (spec §7.16).",
    "The code's two aggregation bugs (spec §7.1 index mismatch, §7.2 in-place mixing) are not "
    "replicated; set fedrema.official_index_bug=true and fedrema.official_inplace_mixing=true for "
    "bit-faithful aggregation.",
    "Per-client optimizer state (momentum) persists across rounds in the code (spec §7.11). That is "
    "the algorithm's behaviour, not a config value: the split algorithms (fedrema*, fedper, fedrep, "
    "head_avg) carry it; the fedavg family restarts local optimizer state every round.",
)

FEDREMA = _preset(
    "fedrema",
    "FedReMa's setting (not the algorithm): 20 clients, dominant-class partition, momentum SGD "
    "lr 0.01, 5 epochs of batch 100, clip 10, 500 rounds",
    "official code liangh68/FedReMa (commit f906947) main.py defaults and generate_dataset.py "
    "\"by_s\", as transcribed in ../shared/specs/fedrema.md §5.1-5.2 (model split §2, similarity "
    "§3.1, aggregation §4, pitfalls §7); tags per value in `provenance`",
    _FEDREMA_ENTRIES, _FEDREMA_NOTES)


# --------------------------------------------------------------------------------------------
# FedProx Synthetic(alpha, beta) (litian96/FedProx; specs/datasets.md §2)

_DATASETS_SPEC = "specs/datasets.md"

_FEDPROX_NOTES = (
    "algorithm is not set: compare --algorithm fedavg and fedprox. fedprox.mu is not set: the "
    "spec gives no mu.",
    "The spec's model is multinomial logistic regression, which the simulator cannot express "
    "(model.hidden needs at least one width, so mlp always has a hidden layer); the model stays at "
    "the config default (mlp, hidden 200,200). Results are not comparable with FedProx's numbers.",
    "The run settings (rounds, clients per round, batch, epochs, lr) come from an untagged line of "
    "specs/datasets.md §2; only the generator is tagged [verified].",
    "The spec does not give FedProx's device sampling or aggregation weighting, nor its evaluation "
    "cadence or seed; the simulator's defaults apply (uniform cohort of 10, server.weighting "
    "samples, eval_every default).",
    "Systems heterogeneity (drop_percent 0.5 / 0.9) is not modelled: this is drop_percent 0.",
    "Device sizes n_k = floor(LogNormal(4, 2)) + 50 are clipped at 10,000 (the source's "
    "SYNTHETIC_MAX_SAMPLES) so the padded client arrays stay small.",
)

_FEDPROX_SOURCE = ("FedProx (litian96/FedProx) synthetic generator [verified] and paper run "
                   "settings, as summarized in ../shared/specs/datasets.md §2; tags per value in "
                   "`provenance`")


def _fedprox_synthetic(suffix: str, label: str, alpha: float, beta: float, iid: bool) -> Preset:
    """FedProx's Synthetic(alpha, beta) (or IID) setting; the four variants share everything else."""
    variant = "Synthetic IID" if iid else f"Synthetic({alpha:g}, {beta:g})"
    entries = [
        ("rounds", 200, f"run settings: 200 rounds ({_DATASETS_SPEC} §2)"),
        ("cohort", 10, f"run settings: 10 clients per round ({_DATASETS_SPEC} §2)"),
        ("data.dataset", "synthetic", f"[verified] FedProx generate_synthetic.py ({_DATASETS_SPEC} §2)"),
        ("data.partition", "natural", f"[verified] one device per client ({_DATASETS_SPEC} §2)"),
        ("data.num_clients", 30, f"[verified] 30 devices ({_DATASETS_SPEC} §2)"),
        ("data.synthetic_features", 60, f"[verified] d = 60 ({_DATASETS_SPEC} §2)"),
        ("data.synthetic_iid", iid, f"paper set {label}: {variant} ({_DATASETS_SPEC} §2)"),
        ("data.synthetic_alpha", alpha, f"paper set {label} ({_DATASETS_SPEC} §2)"),
        ("data.synthetic_beta", beta, f"paper set {label} ({_DATASETS_SPEC} §2)"),
        ("local.optimizer", "sgd", f"run settings: lr 0.01, plain SGD ({_DATASETS_SPEC} §2)"),
        ("local.lr", 0.01, f"run settings: lr 0.01 ({_DATASETS_SPEC} §2)"),
        ("local.batch_size", 10, f"run settings: batch 10 ({_DATASETS_SPEC} §2)"),
        ("local.epochs", 20, f"run settings: 20 local epochs ({_DATASETS_SPEC} §2)"),
        ("local.steps", 0, f"run settings: epoch-based ({_DATASETS_SPEC} §2)"),
    ]
    return _preset(
        f"fedprox_synthetic_{suffix}",
        f"FedProx's {variant} setting (not the algorithm): 30 devices, 10 per round, SGD lr 0.01, "
        "20 epochs of batch 10, 200 rounds",
        _FEDPROX_SOURCE, entries, _FEDPROX_NOTES)


# The paper's four synthetic sets: iid, (0,0), (0.5,0.5), (1,1) (specs/datasets.md §2).
_FEDPROX_SYNTHETIC = [
    _fedprox_synthetic("iid", "iid", 0.0, 0.0, True),
    _fedprox_synthetic("0_0", "(0,0)", 0.0, 0.0, False),
    _fedprox_synthetic("0.5_0.5", "(0.5,0.5)", 0.5, 0.5, False),
    _fedprox_synthetic("1_1", "(1,1)", 1.0, 1.0, False),
]


# --------------------------------------------------------------------------------------------
# FLoRAL (zeligism/FLoRAL conf/task/*.yaml and conf/method/floral.yaml; specs/floral.md §2-§6)

_FLORAL_SPEC = "specs/floral.md"
_FLORAL_SOURCE = ("official code zeligism/FLoRAL (last commit 2024-10-03) Hydra configs, as "
                  "transcribed in ../shared/specs/floral.md §2 (parametrization), §3 (protocol), "
                  "§5 (setup table), §6 (synthetic generator); tags per value in `provenance`")


def _floral_common(adaptors: int, router_lr: float) -> list:
    """The FLoRAL(1%) method settings shared by every task [code]."""
    return [
        ("floral.num_adaptors", adaptors, f"[C] C = the task's true number of clusters ({_FLORAL_SPEC} §2)"),
        ("floral.rho", 0.01, f"[C] FLoRAL(1%): rank budget rho 0.01 ({_FLORAL_SPEC} §2); FLoRAL(10%) is 0.1"),
        ("floral.rank", 0, f"[C] rank from the rho rule ({_FLORAL_SPEC} §2)"),
        ("floral.router_lr", router_lr, f"[C] task router lr ({_FLORAL_SPEC} §5)"),
        ("floral.router_noise", 1.0, f"[C] router_noise_std 1.0, uniform ({_FLORAL_SPEC} §2)"),
        ("floral.min_prob", 0.01, f"[C] forward clamp max(pi, 0.01) ({_FLORAL_SPEC} §2, §8.3)"),
        ("floral.adaptor_bias", "torch_default", f"[C] adaptor biases keep PyTorch's init ({_FLORAL_SPEC} §8.2)"),
        ("floral.precondition", True, f"[C] PrecondLoRATrainer, eps 1e-5 ({_FLORAL_SPEC} §3, §8.1)"),
        ("local.optimizer", "sgd", f"[C] SGD, no momentum, wd 0 ({_FLORAL_SPEC} §3)"),
        ("local.epochs", 1, f"[C] local_epochs 1 ({_FLORAL_SPEC} §3, §8.16)"),
        ("local.steps", 0, f"[C] epoch-based ({_FLORAL_SPEC} §3)"),
        ("server.optimizer", "sgd", f"[C] server SGD(lr=1) = plain replacement ({_FLORAL_SPEC} §3 step 5)"),
        ("server.lr", 1.0, f"[C] as server.optimizer ({_FLORAL_SPEC} §3)"),
        ("server.weighting", "samples", f"[C] p_k = n_k / sum n_j over participants ({_FLORAL_SPEC} §3)"),
    ]


_FLORAL_NOTES = (
    "algorithm is not set: this is the setting under which floral, floral_oracle, "
    "floral_stateless, local_adaptor, ensemble, ensemble_oracle and fedavg are compared. "
    "FLoRAL(10%) is --set floral.rho=0.1.",
    "Evaluation: the code evaluates a fraction_evaluate subset of clients per round and reports "
    "the last round's test-size-weighted mean; the simulator evaluates every client and reports "
    "both the mean over clients (personalized_*) and the pooled value (pooled_*).",
    "The code's training loaders are not shuffled (spec §8.9); the simulator reshuffles every epoch.",
    "The ConvLoRA rank / fan-in bug (spec §8.7) is fixed by default; --set "
    "floral.conv_rank_rule=official_bug reproduces it.",
    "JAX's RNG streams cannot reproduce PyTorch's; initial values and batches differ.",
)


def _floral_image(name: str, description: str, dataset: str | None, clients: int, cohort: int,
                  batch: int, lr: float, test_fraction: float, model: list, notes: tuple) -> Preset:
    entries = [
        ("rounds", 500, f"[C] 500 rounds ({_FLORAL_SPEC} §5)"),
        ("cohort", cohort, f"[C] clients per round ({_FLORAL_SPEC} §5)"),
        ("data.partition", "clusters", f"[C] IID split, cluster = client id mod C ({_FLORAL_SPEC} §5)"),
        ("data.num_clients", clients, f"[C] K clients ({_FLORAL_SPEC} §5)"),
        ("data.num_clusters", 4, f"[C] 4 clusters ({_FLORAL_SPEC} §5)"),
        ("data.test_fraction", test_fraction, f"[C] per-client test share of the standard splits ({_FLORAL_SPEC} §5)"),
        ("local.batch_size", batch, f"[C] batch ({_FLORAL_SPEC} §5)"),
        ("local.lr", lr, f"[C] client lr; lora_lr = lr ({_FLORAL_SPEC} §3, §5)"),
        *model,
        *_floral_common(4, 0.1),
    ]
    if dataset is not None:
        entries.insert(2, ("data.dataset", dataset, f"[C] {dataset} ({_FLORAL_SPEC} §5)"))
    return _preset(name, description, _FLORAL_SOURCE, entries, notes + _FLORAL_NOTES)


FLORAL_PAPER = _floral_image(
    "floral-paper",
    "FLoRAL's MNIST setting (not the algorithm): 300 clients in 4 clusters, 30 per round, MLP "
    "784-200-10, SGD lr 0.1, 1 epoch of batch 32, 500 rounds",
    None, 300, 30, 32, 0.1, 1 / 7,
    [("model.name", "mlp", f"[C] MLP 784-200-10 ({_FLORAL_SPEC} §5)"),
     ("model.hidden", (200,), f"[C] one hidden layer of 200 ({_FLORAL_SPEC} §5)")],
    ("data.dataset is not set: the paper's is TFDS mnist (--set data.dataset=mnist, 200 train / "
     "~33 test images per client with test_fraction 1/7); on the embedded digits the same setting "
     "runs with far fewer images per client. data.cluster_transform is not set: rotate (MN-Rot) "
     "or label_shift (MN-LS).",))

FLORAL_PAPER_CIFAR10 = _floral_image(
    "floral-paper-cifar10",
    "FLoRAL's CIFAR-10 setting (not the algorithm): 20 clients in 4 clusters, all per round, "
    "SGD lr 0.03, 1 epoch of batch 64, 500 rounds",
    "cifar10", 20, 0, 64, 0.03, 1 / 6,
    [("model.name", "cifar_cnn", f"[I] closest built-in CNN ({_FLORAL_SPEC} §5 has "
                                 "conv5-pool2-conv3-pool3-fc64)")],
    ("Model: the code's CNN (conv5 3->32, pool 2, conv3 32->64, pool 3, fc 1024->64, fc 10) is not "
     "built in; cifar_cnn (conv32-conv64-fc128, 3x3 SAME) stands in. The code's crop/flip "
     "augmentation and per-channel normalization are not modelled.",
     "data.cluster_transform is not set: rotate (C10-Rot) or label_shift (C10-LS)."))


def _floral_synthetic(variant: str, clients: int, clusters: int, batch: int, lr: float,
                      hidden: tuple) -> Preset:
    entries = [
        ("rounds", 2000, f"[C] 2000 rounds ({_FLORAL_SPEC} §5)"),
        ("cohort", 0, f"[C] all clients every round ({_FLORAL_SPEC} §5)"),
        ("data.dataset", "floral_synthetic", f"[C] SyntheticDataset ({_FLORAL_SPEC} §6)"),
        ("data.partition", "natural", f"[C] one generated client per client ({_FLORAL_SPEC} §6)"),
        ("data.floral_variant", variant, f"[C] synthetic_{variant} ({_FLORAL_SPEC} §5, §6)"),
        ("data.num_clients", clients, f"[C] K = {clients} ({_FLORAL_SPEC} §5)"),
        ("data.num_clusters", clusters, f"[C] C = {clusters}, client k in cluster k mod C ({_FLORAL_SPEC} §6)"),
        ("local.batch_size", batch, f"[C] batch {batch} ({_FLORAL_SPEC} §5)"),
        ("local.lr", lr, f"[C] client lr {lr} ({_FLORAL_SPEC} §5)"),
        ("model.name", "mlp", f"[C] {'Linear(10,3)' if not hidden else '10-20 ReLU-1'} ({_FLORAL_SPEC} §5)"),
        ("model.hidden", hidden, f"[C] {'no hidden layer' if not hidden else 'hidden 20'} ({_FLORAL_SPEC} §5)"),
        ("task.name", "regression_mse", f"[C] MSE loss and metric ({_FLORAL_SPEC} §6)"),
        *_floral_common(clusters, 0.1),
    ]
    return _preset(
        f"floral-synthetic-{variant}",
        f"FLoRAL's synthetic {variant} regression (not the algorithm): {clients} clients in "
        f"{clusters} clusters, SGD lr {lr}, batch {batch}, 2000 rounds",
        _FLORAL_SOURCE, entries,
        ("The generator's normal draws are numpy's, not torch's: same structure, draw order, "
         "sample counts and splits, different values (spec §6).",) + _FLORAL_NOTES)


_FLORAL = [FLORAL_PAPER, FLORAL_PAPER_CIFAR10, _floral_synthetic("linear", 10, 2, 4, 0.1, ()),
           _floral_synthetic("mlp", 20, 4, 8, 0.03, (20,))]

# --------------------------------------------------------------------------------------------
# FedHCA2 (innovator-zero/FedHCA2 train.py / configs; specs/fedhca2.md §2-§6)

_FEDHCA2_SPEC = "specs/fedhca2.md"

FEDHCA2_PAPER = _preset(
    "fedhca2-paper",
    "FedHCA2's setting (not the algorithm): official method values (c 0.4, alpha = beta = 0.1, hyper "
    "SGD 0.01/0.9/1e-4) on the spec's CPU analogue HC-FMTL-lite s1: Adam 1e-3, batch 32, local "
    "epochs 1 (domain A) / 2 (B), 40 rounds",
    "innovator-zero/FedHCA2 (commit 9e3c9b3) train.py, configs/*.yml; specs/fedhca2.md §2-§6",
    [("data.dataset", "hcfmtl_lite", f"[ours] HC-FMTL-lite, the CPU analogue ({_FEDHCA2_SPEC} §6)"),
     ("data.scenario", "s1", f"[ours] S1 mirrors the '1c' configs ({_FEDHCA2_SPEC} §6)"),
     ("rounds", 40, f"[ours] R = 40 ({_FEDHCA2_SPEC} §6; the code's default is 100)"),
     ("eval_every", 4, f"[C] eval_freq 4 ({_FEDHCA2_SPEC} §4)"),
     ("cohort", 0, f"[C] every client trains every round ({_FEDHCA2_SPEC} §4)"),
     ("local.optimizer", "adam", f"[ours] Adam ({_FEDHCA2_SPEC} §6; the code uses AdamW 1e-4 on Swin-T)"),
     ("local.lr", 0.001, f"[ours] lr 1e-3 ({_FEDHCA2_SPEC} §6)"),
     ("local.batch_size", 32, f"[ours] batch 32 ({_FEDHCA2_SPEC} §6)"),
     ("local.epochs_per_domain", (1, 2), f"[ours] A 1, B 2, mimicking the code's PASCAL 1 / NYUD 4 ({_FEDHCA2_SPEC} §6, §8.11)"),
     ("model.encoder", (64, 64), f"[ours] MLP 32-64-64 ({_FEDHCA2_SPEC} §6)"),
     ("model.decoder", (32, 32), f"[ours] decoder 64-32-32, layers l0, l1 ({_FEDHCA2_SPEC} §6)"),
     ("fedhca2.ca_c", 0.4, f"[C] ca_c 0.4 ({_FEDHCA2_SPEC} §2)"),
     ("fedhca2.rescale", 1, f"[C] rescale 1: U / (1 + c^2) ({_FEDHCA2_SPEC} §2a)"),
     ("fedhca2.alpha_init", 0.1, f"[C] --enc_alpha_init 0.1 ({_FEDHCA2_SPEC} §2, §8.5)"),
     ("fedhca2.beta_init", 0.1, f"[C] --dec_beta_init 0.1 ({_FEDHCA2_SPEC} §3, §8.5)"),
     ("fedhca2.hyper_lr", 0.01, f"[C] Hyperweight lr 0.01 ({_FEDHCA2_SPEC} §4)"),
     ("fedhca2.hyper_momentum", 0.9, f"[C] Hyperweight momentum 0.9 ({_FEDHCA2_SPEC} §4)"),
     ("fedhca2.hyper_weight_decay", 0.0001, f"[C] Hyperweight weight_decay 1e-4 ({_FEDHCA2_SPEC} §4)")],
    ("The paper's setting (PASCAL-Context + NYUD-v2, Swin-T pretrained, AdamW 1e-4 with a cosine "
     "schedule, 100 rounds, 2 GPUs) cannot run here: this preset is the spec's HC-FMTL-lite "
     "analogue with the official method settings. Use --set data.scenario=s2 for the '2c' analogue.",
     "The dual of the conflict-averse step is solved with a fixed-iteration JAX solver, not SLSQP; "
     "on tiny updates SLSQP stalls at uniform weights (spec §8.1): --set fedhca2.uniform_dual=true "
     "reproduces that behaviour.",
     "The official FedAvg baseline averages all decoders across tasks (algorithm fedavg_all); "
     "fedavg averages decoders per task."))

PRESETS: dict[str, Preset] = {p.name: p for p in [FEDREMA, *_FEDPROX_SYNTHETIC, *_FLORAL, FEDHCA2_PAPER]}


# --------------------------------------------------------------------------------------------
# API

def get_preset(name: str) -> Preset:
    """The preset called ``name``; ConfigError naming ``--preset`` if there is none."""
    if name not in PRESETS:
        raise ConfigError("--preset", name, "one of " + ", ".join(PRESETS))
    return PRESETS[name]


def _has_preset_field(cfg) -> bool:
    """Whether this Config records its preset (the ``preset`` field may not exist yet)."""
    fields = getattr(type(cfg), "__dataclass_fields__", {})
    return "preset" in fields


def apply_preset(cfg: config_lib.Config, name: str) -> config_lib.Config:
    """Sets every value of preset ``name`` on ``cfg`` (mutated and returned) and records the name.

    Values go through `config.set_field`, so they are type-checked like ``--set``; range checks
    are left to `config.validate`, which the caller runs once all layers are applied.
    """
    preset = get_preset(name)  # unknown name: fail before touching cfg
    # Algorithm sections (fedrema.*, fedprox.*) exist only once their modules have registered them.
    import fedjax_sim.algorithms  # noqa: F401

    for key, value in preset.values.items():
        config_lib.set_field(cfg, key, value)
    if _has_preset_field(cfg):
        cfg.preset = name
    return cfg


def describe_presets() -> list[str]:
    """One line per preset, ``name  description``, names padded to a column (``fedjax-sim list``)."""
    width = max((len(n) for n in PRESETS), default=0)
    return [f"{name:<{width}}  {p.description}" for name, p in PRESETS.items()]
