"""The zoos shipped as code: TINY (tests), QUICK, PAPER_FC, PROVENANCE_QUICK, DNA_QUICK, TREE_QUICK.

Each spec's command and expected build time on a 2-core CPU are stated above it.
Recipes were fixed before any lineage or provenance method was measured on them
(BUILD_NOTES.md, section "Lineage-graph zoos").
"""

from __future__ import annotations

import dataclasses

from jaxlineage import data as data_lib
from jaxlineage.zoo._base import DistillMode, HeadMode, Optimizer, PerturbKind, PruneScope, TrainParams
from jaxlineage.zoo.spec import GraphSpec, Grid, Group, Task, ZooSpec

__all__ = [
    "DNA_QUICK",
    "HUB_SIM",
    "LM_QUICK",
    "LM_TINY",
    "PAPER_FC",
    "PAPER_FC_CPU",
    "PROVENANCE",
    "PROVENANCE_QUICK",
    "PROVENANCE_TINY",
    "QUICK",
    "SPECS",
    "TINY",
    "TREE_QUICK",
]


def _emb(name, classes, **kw):
    return Task(name, "embedded", tuple(classes), **kw)


#: A tiny zoo for tests: 2 parents, 4 children, 2 independents; seconds to build.
TINY = ZooSpec(
    name="tiny",
    arch="mlp",
    arch_kwargs=(("features", (64, 32)),),
    parent_task=Task("A", "embedded", data_lib.TASK_A, n_train=1000),
    child_tasks=(Task("B", "embedded", data_lib.TASK_B, n_train=1000),),
    parents=Grid(lrs=(1e-3,), batch_sizes=(64,), seeds=(0, 1, 2), epochs=1),
    top_k=2,
    children=Grid(lrs=(1e-3, 3e-4), batch_sizes=(64,), seeds=(0,), epochs=1),
    independents=Grid(lrs=(1e-3,), batch_sizes=(64,), seeds=(100, 101), epochs=1),
)

#: The default zoo on the embedded Fashion-MNIST subset: parents on classes 0-4, children on 5-9.
#: 8 parents (top 8 of 12), 48 children, 8 independents of the paper's MLP. Groups: ``parent``
#: (train, top 8), ``child`` (finetune, fresh head, floor 0.90), ``independent`` (train).
#: ``python -m jaxlineage.zoo --spec quick --workdir /tmp/zoo``: minutes on 2 CPU cores.
QUICK = ZooSpec(
    name="quick",
    arch="mlp",
    parent_task=_emb("A", data_lib.TASK_A),
    child_tasks=(_emb("B", data_lib.TASK_B),),
    # Parents share four initialisations (siblings differ only in data order) and children
    # fine-tune with large learning rates, which keeps lineage non-trivial: with independent
    # inits and gentle fine-tuning the plain L2 metric is above 90 % (BUILD_NOTES.md).
    parents=Grid(lrs=(1e-3,), batch_sizes=(128,), seeds=(0, 1, 2), init_seeds=(0, 1, 2, 3), epochs=3),
    top_k=8,
    children=Grid(lrs=(1e-2, 5e-3, 3e-3), batch_sizes=(128,), seeds=(0, 1), epochs=4),
    child_floor=0.90,
    independents=Grid(lrs=(1e-3, 5e-4), batch_sizes=(128,), seeds=(100, 101, 102, 103), epochs=3),
)

#: The Neural Lineage FC recipe (Yu & Wang, CVPR 2024, Sec. 5): MNIST parents, FMNIST / EMNIST-letters children.
PAPER_FC = ZooSpec(
    name="paper_fc",
    arch="mlp",
    parent_task=Task("mnist", "mnist", tuple(range(10))),
    child_tasks=(
        Task("fmnist", "fashion_mnist", tuple(range(10))),
        Task("emnist_letters", "emnist/letters", tuple(range(1, 27))),
    ),
    parents=Grid(lrs=(0.1, 0.01, 0.001), batch_sizes=(64, 256, 1024), seeds=(0, 1, 2, 3), epochs=50),
    top_k=20,
    children=Grid(lrs=(1e-2, 1e-3, 1e-4), batch_sizes=(256, 1024), seeds=(0, 1, 2, 3), epochs=36),
    child_floor=0.80,
    independents=Grid(lrs=(1e-3,), batch_sizes=(256,), seeds=tuple(range(100, 110)), epochs=36),
)


#: The paper's FC benchmark scaled to a shared 2-core CPU on the full Fashion-MNIST (Debian's
#: ``dataset-fashion-mnist``; the embedded subset if it is absent): parents on classes 0-4, children
#: fine-tuned (all parameters, fresh head, Adam) on the disjoint classes 5-9. The paper's shape: 36
#: parent recipes (lr {0.1, 0.01, 0.001} x batch {64, 256, 1024} x 4 seeds, a seed fixing the
#: initialisation, so parents share 4 inits), top 20 kept; 12 children per parent, floor 0.80 (the
#: paper's), so about 11 per parent are kept. Scaled for the CPU (BUILD_NOTES, issue 26): parents 2
#: epochs on the 30,000 training images of classes 0-4 (paper: 50 on MNIST); children 2 epochs
#: (paper: 36) on the first 3,000 training images of classes 5-9, lr {1e-2, 3e-3, 1e-3} (paper:
#: {1e-2, 1e-3, 1e-4}: 1e-4 cannot fit a fresh head in this budget) x batch {64, 256} (paper: {256,
#: 1024}, scaled with the data) x 2 seeds (paper: 4, over two child datasets). 10 independents.
#: ``benchmarks/detector_paper.py zoo`` builds it and records the build time; ``python -m
#: jaxlineage.zoo --spec paper_fc_cpu --workdir DIR`` also builds it.
PAPER_FC_CPU = ZooSpec(
    name="paper_fc_cpu",
    arch="mlp",
    parent_task=Task("fmnist04", "fashion_mnist", data_lib.TASK_A),
    child_tasks=(Task("fmnist59", "fashion_mnist", data_lib.TASK_B, n_train=3000),),
    parents=Grid(lrs=(0.1, 0.01, 0.001), batch_sizes=(64, 256, 1024), seeds=(0, 1, 2, 3), epochs=2),
    top_k=20,
    children=Grid(lrs=(1e-2, 3e-3, 1e-3), batch_sizes=(64, 256), seeds=(0, 1), epochs=2),
    child_floor=0.80,
    independents=Grid(lrs=(1e-3,), batch_sizes=(64,), seeds=tuple(range(100, 110)), epochs=2),
)

# --------------------------------------------------------------------------- PROVENANCE_QUICK

#: Architectures of PROVENANCE_QUICK / DNA_QUICK: small widths so that the zoo builds in minutes.
PQ_ARCHS = {
    "mlp": (("features", (256, 128)),),
    "cnn": (("channels", (4, 8)), ("hidden", 32)),
}
_NET = {"mlp": "mlp", "cnn": "convnet"}

# Recipes (fixed before any method was measured; BUILD_NOTES.md states them with their sources).
# Epochs per architecture of the model being trained (the CPU budget: a ConvNet epoch costs ~10x an
# MLP's on 2 cores), the same for positives and negatives.
_BS = 64
_EP = {"mlp": 5, "cnn": 3}


def _source(arch, ep=None):
    return dict(optimizer=Optimizer.ADAM, lr=1e-3, batch_size=_BS, epochs=(ep or _EP)[arch])


# SAC's fine-tuning attack: SGD lr 5e-4, momentum 0.9, weight decay 5e-4 (30 epochs on CIFAR; 5 / 3 here).
_SAC_SGD = dict(optimizer=Optimizer.SGD, momentum=0.9, weight_decay=5e-4, batch_size=_BS)
# SAC's pruning repair: SGD lr 1e-3; one epoch after pruning to the target at once.
_REPAIR = dict(_SAC_SGD, lr=1e-3, epochs=1)


def _derivations(base: str, arch: str, *, prefix: str, tags: tuple[str, ...], ep=None) -> list[Group]:
    """The SAC / ModelGiF derivations applied to every model of group ``base`` (``arch``: ``mlp`` / ``cnn``),
    on the attacker's half. Applied to the sources (positives) and, with the same recipes, to the
    independents (negatives)."""
    other = "cnn" if arch == "mlp" else "mlp"
    _EP = ep or globals()["_EP"]
    _FT = dict(_SAC_SGD, lr=5e-4, epochs=_EP[arch])
    # SAC's extraction: SGD 0.1 (soft) / 0.05 (label-only) with cosine decay on CIFAR ResNets; without
    # BatchNorm our MLP / ConvNet students need smaller constant rates: 0.01 for both.
    _EXTRACT = dict(_SAC_SGD, lr=1e-2, epochs=_EP[arch])
    _EXTRACT_X = dict(_SAC_SGD, lr=1e-2, epochs=_EP[other])
    # Transfer: the victim fine-tuned (all parameters, fresh head) on another task.
    _TRANSFER = dict(_SAC_SGD, lr=1e-2, epochs=_EP[arch])
    g = lambda name, op, **kw: Group(f"{prefix}{name}", op, source=base, prefix=f"{name}-", tags=tags, **kw)  # noqa: E731
    return [
        g(
            "ft_all",
            "finetune",
            task="A-att",
            kind="finetune_all",
            grid=dict(_FT, params=TrainParams.ALL, head=HeadMode.KEEP, seed=(0,)),
        ),
        g(
            "ft_head",
            "finetune",
            task="A-att",
            kind="finetune_head",
            grid=dict(_FT, params=TrainParams.HEAD, head=HeadMode.KEEP, seed=(0,)),
        ),
        g(
            "prune",
            "prune",
            task="A-att",
            kind="prune",
            grid=dict(_REPAIR, sparsity=(0.3, 0.6, 0.9), scope=PruneScope.GLOBAL, seed=(0,)),
        ),
        g(
            "extract_p",
            "distill",
            task="A-att",
            kind="extract_p",
            arch=_NET[arch],
            arch_kwargs=PQ_ARCHS[arch],
            grid=dict(_EXTRACT, mode=DistillMode.SOFT, temperature=20.0, alpha=0.9, seed=(0,)),
        ),
        g(
            "extract_px",
            "distill",
            task="A-att",
            kind="extract_p_other_arch",
            arch=_NET[other],
            arch_kwargs=PQ_ARCHS[other],
            grid=dict(_EXTRACT_X, mode=DistillMode.SOFT, temperature=20.0, alpha=0.9, seed=(0,)),
        ),
        g(
            "extract_l",
            "distill",
            task="A-att",
            kind="extract_l",
            arch=_NET[arch],
            arch_kwargs=PQ_ARCHS[arch],
            grid=dict(_EXTRACT, mode=DistillMode.LABEL, seed=(0,)),
        ),
        g(
            "transfer",
            "finetune",
            task="B-att",
            kind="transfer",
            grid=dict(_TRANSFER, params=TrainParams.ALL, head=HeadMode.FRESH, seed=(0,)),
        ),
        g("permute", "permute", kind="permute", grid=dict(seed=(0,))),
        g("noise", "perturb", kind="perturb_noise", grid=dict(kind=PerturbKind.NOISE, scale=0.05, seed=(0,))),
        g("int8", "perturb", kind="perturb_int8", grid=dict(kind=PerturbKind.INT8, seed=(0,))),
    ]


def _provenance_quick(name="provenance_quick", archs=("mlp", "cnn"), ep=None, n_train=None) -> GraphSpec:
    tasks = (
        _emb("A-def", data_lib.TASK_A, half=0, n_train=n_train),  # the defender's half of classes 0-4
        _emb("A-att", data_lib.TASK_A, half=1, n_train=n_train),  # the attacker's half of classes 0-4
        _emb("B-att", data_lib.TASK_B, half=1, n_train=n_train),  # the transfer task: the attacker's half of 5-9
    )
    groups = []
    for arch in archs:
        # Sources (victims): trained on the defender's half. Independents (negatives' bases): the same
        # recipe on the attacker's half, other seeds.
        groups.append(
            Group(
                f"src_{arch}",
                "train",
                task="A-def",
                arch=_NET[arch],
                arch_kwargs=PQ_ARCHS[arch],
                grid=dict(_source(arch, ep), seed=(0, 1)),
                prefix=f"src_{arch}-",
                kind="source",
                tags=("source",),
            )
        )
        groups.append(
            Group(
                f"ind_{arch}",
                "train",
                task="A-att",
                arch=_NET[arch],
                arch_kwargs=PQ_ARCHS[arch],
                grid=dict(_source(arch, ep), seed=(10, 11)),
                prefix=f"ind_{arch}-",
                kind="independent",
                tags=("negative", "independent"),
            )
        )
        # From scratch on the transfer task (the negatives of ``transfer``).
        groups.append(
            Group(
                f"scratch_B_{arch}",
                "train",
                task="B-att",
                arch=_NET[arch],
                arch_kwargs=PQ_ARCHS[arch],
                grid=dict(_source(arch, ep), seed=(20, 21)),
                prefix=f"scratch_{arch}-",
                kind="scratch_transfer",
                tags=("negative",),
            )
        )
        groups += _derivations(f"src_{arch}", arch, prefix=f"{arch}.", tags=("positive",), ep=ep)
        groups += _derivations(f"ind_{arch}", arch, prefix=f"ind_{arch}.", tags=("negative",), ep=ep)
    return GraphSpec(
        name,
        tasks,
        tuple(groups),
        max_population=16,
        seed=0,
        sequential_archs=("convnet",),
        notes="SAC / ModelGiF IP-protection benchmark on the embedded Fashion-MNIST; see BUILD_NOTES.md",
    )


#: SAC / ModelGiF's IP-protection benchmark on the embedded Fashion-MNIST (BUILD_NOTES.md, "Provenance").
#: Sources ``src_mlp`` / ``src_cnn`` (2 each) on the defender's half of classes 0-4; every source
#: derived on the attacker's half into groups ``<arch>.<kind>`` (tag ``positive``): ``ft_all``,
#: ``ft_head``, ``prune`` (30 / 60 / 90 %), ``extract_p``, ``extract_px`` (other architecture),
#: ``extract_l``, ``transfer`` (classes 5-9, fresh head), ``permute``, ``noise``, ``int8``.
#: Negatives (tag ``negative``): ``ind_<arch>`` trained from scratch on the attacker's half with the
#: sources' recipe, the same derivations of them (``ind_<arch>.<kind>``: e.g. students of an
#: independent teacher), and ``scratch_B_<arch>`` from scratch on the transfer task.
#: ``python -m jaxlineage.zoo --spec provenance_quick --workdir /tmp/pq``: a few minutes on 2 CPU cores.
PROVENANCE_QUICK = _provenance_quick()

#: The tests' provenance zoo: PROVENANCE_QUICK's groups and recipes with one epoch on 600 training
#: inputs per task (students of the other architecture included, so every attack column exists).
PROVENANCE_TINY = _provenance_quick("provenance_tiny", ep={"mlp": 1, "cnn": 1}, n_train=600)


# --------------------------------------------------------------------------- DNA_QUICK

#: Model DNA's tasks: class pairs disjoint from the sources' classes 0-4. Pool tasks (for training the
#: provenance classifier) and evaluation tasks are different tasks.
DNA_POOL_TASKS = ((5, 6), (7, 8), (6, 9))
DNA_EVAL_TASKS = ((5, 7), (8, 9))
_DNA = dict(optimizer=Optimizer.ADAM, lr=1e-3, batch_size=_BS, epochs=3)  # MGMP: framework defaults for both


def _dna_quick() -> GraphSpec:
    tasks = [_emb("A", data_lib.TASK_A)]
    groups = [
        Group(
            "source",
            "train",
            task="A",
            arch="mlp",
            arch_kwargs=PQ_ARCHS["mlp"],
            grid=dict(_DNA, seed=(0, 1, 2, 3)),
            prefix="src-",
            kind="source",
            tags=("source",),
        )
    ]
    for split, pairs in (("pool", DNA_POOL_TASKS), ("eval", DNA_EVAL_TASKS)):
        for a, b in pairs:
            t = f"T{a}{b}"
            tasks.append(_emb(t, (a, b)))
            # Homologous: fine-tuned from each source (all parameters, fresh head) with the same recipe
            # as the non-homologous models, trained from random initialisations on the same task.
            groups.append(
                Group(
                    f"{split}.hom.{t}",
                    "finetune",
                    source="source",
                    task=t,
                    prefix="hom-",
                    grid=dict(_DNA, head=HeadMode.FRESH, seed=(0, 1)),
                    kind="homologous",
                    tags=(split, "homologous"),
                )
            )
            groups.append(
                Group(
                    f"{split}.non.{t}",
                    "train",
                    task=t,
                    arch="mlp",
                    arch_kwargs=PQ_ARCHS["mlp"],
                    grid=dict(_DNA, seed=tuple(range(100, 108))),
                    prefix="non-",
                    kind="non_homologous",
                    tags=(split, "non_homologous"),
                )
            )
    return GraphSpec(
        "dna_quick",
        tuple(tasks),
        tuple(groups),
        max_population=16,
        seed=0,
        notes="Model DNA (MGMP) protocol on the embedded Fashion-MNIST; see BUILD_NOTES.md",
    )


#: Model DNA's protocol: 4 MLP ``source`` models on classes 0-4; per task (class pairs of 5-9),
#: homologous models fine-tuned from every source (2 seeds: groups ``<split>.hom.<task>``) and as many
#: non-homologous ones from random inits (``<split>.non.<task>``); ``split`` is ``pool`` (tasks
#: T56, T78, T69) or ``eval`` (T57, T89). Tags ``pool`` / ``eval``, ``homologous`` / ``non_homologous``.
DNA_QUICK = _dna_quick()


# --------------------------------------------------------------------------- TREE_QUICK

# Recipes (fixed before any tree-recovery method was measured on this zoo, except the data-order
# seeds: BUILD_NOTES.md, "Lineage tree recovery"). Roots: QUICK's parent recipe, but every root from
# its own initialisation (QUICK's parents share inits in pairs, which makes init-twin roots).
_TREE_ROOT = dict(optimizer=Optimizer.ADAM, lr=1e-3, batch_size=128, epochs=3)
_TREE_ADAM = dict(optimizer=Optimizer.ADAM, batch_size=128)
# Fine-tuning strengths span 30x in lr and 3x in epochs, from a gentle 3e-4 x 1 epoch to QUICK's
# strongest children (3e-3 x 3 epochs); grandchildren gentler still (1e-4 / 1e-3, 1 epoch, head kept).
# Every fine-tune has its own data-order seed (and so its own fresh head): the data order of epoch
# ``e`` is ``fold_in(key(seed), e)`` with a constant lr, so with one seed a 1-epoch fine-tune is
# exactly the first-epoch checkpoint of its 3-epoch sibling (the first build had that defect).
_TREE_CHILD_FT = {"a": (3e-4, 1, 10), "b": (3e-4, 3, 11), "c": (3e-3, 1, 12), "d": (3e-3, 3, 13)}  # lr, epochs, seed
_TREE_GRAND_FT = {"lo": (1e-4, 20), "hi": (1e-3, 30)}  # lr, seed (+ the child's letter index); 1 epoch


def _tree_quick() -> GraphSpec:
    tasks = (_emb("A", data_lib.TASK_A), _emb("B", data_lib.TASK_B))
    g = lambda name, op, **kw: Group(name, op, prefix=f"{name}-", **kw)  # noqa: E731
    groups = [
        # Generation 0: the roots.
        g("root", "train", task="A", arch="mlp", grid=dict(_TREE_ROOT, seed=(0, 1, 2, 3)), kind="root", tags=("gen0",)),
        # Generation 1: each root pruned (50 %, SAC's one-epoch masked repair on its own task) and
        # permuted (same function); fine-tuned below.
        g(
            "child_prune",
            "prune",
            source="root",
            grid=dict(_REPAIR, sparsity=0.5, scope=PruneScope.GLOBAL, seed=(0,)),
            kind="prune",
            tags=("gen1",),
        ),
        g("child_perm", "permute", source="root", grid=dict(seed=(0,)), kind="permute", tags=("gen1",)),
    ]
    for i, (x, (lr, ep, seed)) in enumerate(_TREE_CHILD_FT.items()):
        # Generation 1: each root fine-tuned on classes 5-9 (all parameters, fresh head) at 4 strengths.
        child = f"child_ft_{x}"
        groups.append(
            g(
                child,
                "finetune",
                source="root",
                task="B",
                grid=dict(_TREE_ADAM, lr=lr, epochs=ep, head=HeadMode.FRESH, seed=seed),
                kind="finetune",
                tags=("gen1",),
            )
        )
        # Generation 2: every fine-tuned child fine-tuned again on its task (head kept) at 2 strengths,
        # and pruned one-shot (30 %, no repair).
        for y, (glr, gseed) in _TREE_GRAND_FT.items():
            groups.append(
                g(
                    f"grand_ft_{x}_{y}",
                    "finetune",
                    source=child,
                    grid=dict(_TREE_ADAM, lr=glr, epochs=1, head=HeadMode.KEEP, seed=gseed + i),
                    kind="finetune",
                    tags=("gen2",),
                )
            )
        groups.append(
            g(
                f"grand_prune_{x}",
                "prune",
                source=child,
                grid=dict(sparsity=0.3, scope=PruneScope.GLOBAL, epochs=0, seed=(0,)),
                kind="prune",
                tags=("gen2",),
            )
        )
    groups += [
        # Generation 2: the permuted child fine-tuned on classes 5-9 (fresh head); the pruned child permuted.
        g(
            "grand_ft_perm",
            "finetune",
            source="child_perm",
            task="B",
            grid=dict(_TREE_ADAM, lr=1e-3, epochs=1, head=HeadMode.FRESH, seed=40),
            kind="finetune",
            tags=("gen2",),
        ),
        g("grand_perm", "permute", source="child_prune", grid=dict(seed=(0,)), kind="permute", tags=("gen2",)),
    ]
    return GraphSpec(
        "tree_quick",
        tasks,
        tuple(groups),
        max_population=16,
        seed=0,
        notes="Lineage-tree recovery (MoTHer's question) on the embedded Fashion-MNIST; see BUILD_NOTES.md",
    )


#: Lineage-tree recovery (issue 17): a forest of 4 roots and 3 generations, 84 MLPs (the default
#: 784-1024-256-128), every model kept (no floor, no top-k) so the true forest is the whole zoo.
#:
#: * ``root`` (4): trained from scratch on classes 0-4, each from its own initialisation.
#: * ``child_ft_{a,b,c,d}`` (16): every root fine-tuned on classes 5-9 (all parameters, fresh head,
#:   Adam) at lr 3e-4 x 1 epoch (a), 3e-4 x 3 (b), 3e-3 x 1 (c), 3e-3 x 3 (d); ``child_prune`` (4): 50 %
#:   global magnitude pruning with one epoch of masked repair (SGD 1e-3) on classes 0-4;
#:   ``child_perm`` (4): hidden units permuted.
#: * ``grand_ft_{a..d}_{lo,hi}`` (32): every fine-tuned child fine-tuned again (head kept) at lr
#:   1e-4 / 1e-3, 1 epoch; ``grand_prune_{a..d}`` (16): every fine-tuned child pruned one-shot to 30 %;
#:   ``grand_ft_perm`` (4): the permuted child fine-tuned on classes 5-9 (fresh head, lr 1e-3, 1
#:   epoch); ``grand_perm`` (4): the pruned child permuted.
#:
#: Every fine-tuning group has its own data-order seed. 80 edges: 52 fine-tune, 20 prune, 8 permute.
#: Group tags ``gen0`` / ``gen1`` / ``gen2``.
#: ``python -m jaxlineage.zoo --spec tree_quick --workdir /tmp/tree_zoo``: about 2 minutes on 2 CPU cores
#: (BUILD_NOTES.md has the measured time).
TREE_QUICK = _tree_quick()

SPECS = {s.name: s for s in (TINY, QUICK, PAPER_FC, PROVENANCE_QUICK, PROVENANCE_TINY, DNA_QUICK, TREE_QUICK)}


# --------------------------------------------------------------------------- LM_QUICK

#: LM_QUICK's transformer: 2 pre-LN blocks, width 32, 4 heads, MLP 128, byte tokens, 64-byte windows.
LM_ARCH = (("d_model", 32), ("num_heads", 4), ("num_layers", 2), ("mlp_dim", 128), ("max_len", 64))
_LM_ADAM = dict(optimizer=Optimizer.ADAM, batch_size=32)


def _lm_quick(
    name: str = "lm_quick",
    *,
    bases: int = 6,
    seq_len: int = 64,
    n_pre: int = 3200,
    n_ft: int = 1600,
    pre_epochs: int = 3,
    arch: tuple = LM_ARCH,
    student: tuple | None = None,
) -> GraphSpec:
    """Language-model lineage: ``bases`` byte-level LMs pretrained on the stdlib's code from independent
    initialisations and data orders, each derived by every LM operation. A base's derived models are its
    positives; the same recipes applied to the other, independently pretrained bases are its negatives."""
    t = f"@{seq_len}"
    tasks = (
        Task("code", f"stdlib{t}", tuple(range(256)), n_train=n_pre),  # pretraining: top-level stdlib modules
        Task("prose", f"pydoc{t}", tuple(range(256)), n_train=n_ft),  # fine-tuning: the reference docs
        Task("net", f"stdlib_net{t}", tuple(range(256)), n_train=n_ft),  # fine-tuning: email/http/json/...
        Task("async", f"stdlib_async{t}", tuple(range(256)), n_train=2 * n_ft),  # continued pretraining
    )
    arch_kw = tuple(arch)
    half = ("d_model", "mlp_dim")
    small = student if student is not None else tuple((k, v // 2 if k in half else v) for k, v in arch)
    g = lambda n, op, **kw: Group(n, op, source="base", prefix=f"{n}-", tags=("derived",), **kw)  # noqa: E731
    keep = dict(params=TrainParams.ALL, head=HeadMode.KEEP)
    groups = [
        Group(
            "base",
            "train",
            task="code",
            arch="transformer_lm",
            arch_kwargs=arch_kw,
            grid=dict(_LM_ADAM, lr=3e-3, epochs=pre_epochs, seed=tuple(range(bases))),
            prefix="base-",
            kind="source",
            tags=("source",),
        ),
        g("ft", "finetune", task="prose", kind="finetune_all", grid=dict(_LM_ADAM, lr=1e-3, epochs=1, **keep)),
        g("ft_net", "finetune", task="net", kind="finetune_all", grid=dict(_LM_ADAM, lr=1e-3, epochs=1, **keep)),
        g("lora", "lora", task="prose", kind="lora", grid=dict(_LM_ADAM, lr=3e-3, epochs=1, rank=4, alpha=8.0)),
        g("cpt", "finetune", task="async", kind="continued_pretrain", grid=dict(_LM_ADAM, lr=3e-3, epochs=1, **keep)),
        g("prune", "prune", kind="prune", grid=dict(sparsity=0.5, scope=PruneScope.GLOBAL)),
        g("int8", "perturb", kind="perturb_int8", grid=dict(kind=PerturbKind.INT8)),
        g(
            "distill",
            "distill",
            task="prose",
            kind="distill_same",
            arch="transformer_lm",
            arch_kwargs=arch_kw,
            grid=dict(_LM_ADAM, lr=3e-3, epochs=2, mode=DistillMode.SOFT, temperature=2.0, alpha=0.9),
        ),
        g(
            "distill_small",
            "distill",
            task="prose",
            kind="distill_small",
            arch="transformer_lm",
            arch_kwargs=small,
            grid=dict(_LM_ADAM, lr=3e-3, epochs=2, mode=DistillMode.SOFT, temperature=2.0, alpha=0.9),
        ),
        g("perm_heads", "permute_lm", kind="permute_heads", grid=dict(parts="heads")),
        g("perm_mlp", "permute_lm", kind="permute_mlp", grid=dict(parts="mlp")),
        g("perm_residual", "permute_lm", kind="permute_residual", grid=dict(parts="residual")),
        Group(
            "merge",
            "merge",
            source="ft",
            partner="ft_net",
            kind="merge",
            prefix="merge-",
            tags=("derived",),
            grid=dict(weight=0.5),
        ),
    ]
    return GraphSpec(
        name,
        tasks,
        tuple(groups),
        max_population=16,
        seed=0,
        notes="byte-level transformer LMs on CPython's own text; recipes in the LM section of BUILD_NOTES.md",
    )


#: Language-model lineage (see :func:`_lm_quick`): 6 bases pretrained on the stdlib's top-level modules
#: (300 Adam steps of 32 x 64 bytes); from each: ``ft`` (all weights, pydoc prose), ``ft_net`` (all weights,
#: the email/http/json/... packages), ``lora`` (rank 4, merged), ``cpt`` (continued pretraining on
#: asyncio/concurrent/multiprocessing), ``prune`` (50 %, global magnitude), ``int8``, ``distill`` /
#: ``distill_small`` (soft logits at T = 2 into a fresh student of the same / half width), ``perm_heads``,
#: ``perm_mlp``, ``perm_residual`` (function-preserving) and ``merge`` (the average of ``ft`` and ``ft_net``
#: of one base: two parents). ``python -m jaxlineage.zoo --spec lm_quick --workdir /tmp/lmq``: 21 min at load ~23
#: on 2 shared cores (219 s of CPU time, so a few minutes idle; idle not measured).
LM_QUICK = _lm_quick()

#: The tests' LM zoo: LM_QUICK's groups at toy sizes (2 bases, width 16, 16-byte windows); ~4.5 min at load ~20.
LM_TINY = _lm_quick(
    "lm_tiny",
    bases=2,
    seq_len=16,
    n_pre=512,
    n_ft=64,
    pre_epochs=2,
    arch=(("d_model", 16), ("num_heads", 2), ("num_layers", 2), ("mlp_dim", 32), ("max_len", 16)),
)

SPECS.update({s.name: s for s in (LM_QUICK, LM_TINY, PAPER_FC_CPU)})


# --------------------------------------------------------------------------- HUB_SIM

# Recipes of the simulated hub (issue 29), fixed before any hub search was measured on it. Small MLPs
# (784-32-16-5) so that thousands build on 2 CPU cores; every model on classes 0-4 (one output space).
HUB_ARCH = (("features", (32, 16)),)
_HUB_ROOT = dict(optimizer=Optimizer.ADAM, lr=1e-3, batch_size=64, epochs=2)
_HUB_FT = dict(optimizer=Optimizer.ADAM, batch_size=64, epochs=1)
#: Models per family of HUB_SIM: a root and its 15 descendants.
HUB_FAMILY = 16


def HUB_SIM(n: int = 1000) -> GraphSpec:  # noqa: N802 (a spec constructor, named like the other specs)
    """A simulated model hub of about ``n`` small MLPs with known lineage (issue 29).

    ``R = round((n - 2T) / 16)`` families of 16 and ``T = max(1, round(n / 200))`` teacher-student pairs:

    * ``hub_root`` (R): trained from scratch on the defender's half of classes 0-4 (Adam 1e-3, 2 epochs),
      each from its own initialisation.
    * Generation 1, on the other half of the data: ``hub_ft_all`` / ``hub_ft_all_b`` (all parameters, head
      kept, lr 1e-3 / 3e-4, 1 epoch, each with its own data order), ``hub_ft_head`` (classifier only, lr
      1e-3), ``hub_prune`` (magnitude, 30 % and 60 %, no repair), ``hub_int8`` (int8 rounding), ``hub_perm``
      (hidden units permuted).
    * Generation 2, from each of the two fine-tunes: ``hub_ft2[_b]`` (all parameters, lr 3e-4, 1 epoch, own
      data order), ``hub_int8_2[_b]``, ``hub_perm_2[_b]``, ``hub_prune_2[_b]`` (30 %, no repair).
    * ``hub_teacher`` (T) roots and ``hub_distill`` (T): a fresh student of the same architecture
      distilled from each teacher (soft targets, T = 4, alpha 0.9, Adam 1e-3, 2 epochs).

    The zoo's manifest keeps the true graph. ``n`` must be at least 18.
    ``zoo.build(HUB_SIM(1000), "/tmp/hub")`` takes a few minutes on 2 CPU cores; writing each model's
    checkpoint dominates it (about 0.1 s per model).
    """
    if n < HUB_FAMILY + 2:
        raise ValueError(f"HUB_SIM(n): n must be >= {HUB_FAMILY + 2}, got {n}")
    t = max(1, round(n / 200))
    r = max(1, round((n - 2 * t) / HUB_FAMILY))
    tasks = (_emb("A-h0", data_lib.TASK_A, half=0), _emb("A-h1", data_lib.TASK_A, half=1))
    g = lambda name, op, **kw: Group(name, op, prefix=f"{name.removeprefix('hub_')}-", **kw)  # noqa: E731
    keep = dict(params=TrainParams.ALL, head=HeadMode.KEEP)
    groups = [
        g(
            "hub_root",
            "train",
            task="A-h0",
            arch="mlp",
            arch_kwargs=HUB_ARCH,
            kind="root",
            tags=("root",),
            grid=dict(_HUB_ROOT, seed=tuple(range(r))),
        ),
        # Each fine-tune has its own data-order seed: with one seed the gentler fine-tune is an earlier point
        # of the stronger one's trajectory (TREE_QUICK's first build had the same defect; the first HUB_SIM had it).
        g(
            "hub_ft_all",
            "finetune",
            source="hub_root",
            task="A-h1",
            kind="finetune_all",
            grid=dict(_HUB_FT, lr=1e-3, seed=1, **keep),
        ),
        g(
            "hub_ft_all_b",
            "finetune",
            source="hub_root",
            task="A-h1",
            kind="finetune_all",
            grid=dict(_HUB_FT, lr=3e-4, seed=5, **keep),
        ),
        g(
            "hub_ft_head",
            "finetune",
            source="hub_root",
            task="A-h1",
            kind="finetune_head",
            grid=dict(_HUB_FT, lr=1e-3, seed=2, params=TrainParams.HEAD, head=HeadMode.KEEP),
        ),
        g(
            "hub_prune",
            "prune",
            source="hub_root",
            kind="prune",
            grid=dict(sparsity=(0.3, 0.6), scope=PruneScope.GLOBAL, epochs=0, seed=0),
        ),
        g("hub_int8", "perturb", source="hub_root", kind="int8", grid=dict(kind=PerturbKind.INT8, seed=0)),
        g("hub_perm", "permute", source="hub_root", kind="permute", grid=dict(seed=0)),
    ]
    for src, sfx, seed in (("hub_ft_all", "", 3), ("hub_ft_all_b", "_b", 6)):
        groups += [
            g(
                f"hub_ft2{sfx}",
                "finetune",
                source=src,
                task="A-h1",
                kind="finetune_all",
                grid=dict(_HUB_FT, lr=3e-4, seed=seed, **keep),
            ),
            g(f"hub_int8_2{sfx}", "perturb", source=src, kind="int8", grid=dict(kind=PerturbKind.INT8, seed=0)),
            g(f"hub_perm_2{sfx}", "permute", source=src, kind="permute", grid=dict(seed=0)),
            g(
                f"hub_prune_2{sfx}",
                "prune",
                source=src,
                kind="prune",
                grid=dict(sparsity=0.3, scope=PruneScope.GLOBAL, epochs=0, seed=0),
            ),
        ]
    groups += [
        g(
            "hub_teacher",
            "train",
            task="A-h0",
            arch="mlp",
            arch_kwargs=HUB_ARCH,
            kind="root",
            tags=("root",),
            grid=dict(_HUB_ROOT, seed=tuple(range(100_000, 100_000 + t))),
        ),
        g(
            "hub_distill",
            "distill",
            source="hub_teacher",
            task="A-h1",
            kind="distill",
            grid=dict(_HUB_ROOT, mode=DistillMode.SOFT, temperature=4.0, alpha=0.9, seed=4),
        ),
    ]
    return GraphSpec(
        f"hub_sim_{n}",
        tasks,
        tuple(groups),
        max_population=128,
        seed=0,
        sequential_archs=(),
        notes="Simulated model hub with known lineage (issue 29); see BUILD_NOTES.md",
    )


# --------------------------------------------------------------------------- PROVENANCE (standard; issue 25)

#: Sources and independents per architecture in PROVENANCE: 8 each, so every attack column has
#: 16 positive pairs (8 sources x 2 architectures, one derived model each) and, for every attack, the
#: same attack on 16 independents (fair negatives), plus the 16 independents (and 4 scratch models for
#: transfer).
PROVENANCE_SEEDS = {"source": tuple(range(8)), "independent": tuple(range(10, 18))}

# extract-Adv (SAC's model_extract_adv.py): the extract-L student's recipe, then 2 epochs of PGD adversarial
# training with plain SGD lr 1e-3, eps 4/256, step 1/256 (the op's defaults), but 5 PGD iterations instead of
# SAC's 30: with 30 a ConvNet group of 8 students ran > 30 min on the shared 2-core machine (CPU budget;
# 5 steps of 1/256 still reach the ball's radius 4/256).
PROVENANCE_PGD_STEPS = 5


def _provenance(name: str = "provenance") -> GraphSpec:
    """PROVENANCE_QUICK's groups and recipes with 8 sources and 8 independents per architecture, plus extract-Adv."""
    base = _provenance_quick(name)
    groups = []
    for g in base.groups:
        grid = dict(g.grid)
        if g.kind == "source":
            grid["seed"] = PROVENANCE_SEEDS["source"]
        elif g.kind == "independent":
            grid["seed"] = PROVENANCE_SEEDS["independent"]
        groups.append(dataclasses.replace(g, grid=tuple(grid.items())))
        if g.kind == "extract_l":
            # The same student recipe as extract-L, then SAC's adversarial training.
            adv = {k: v for k, v in grid.items() if k != "mode"}
            adv["pgd_steps"] = (PROVENANCE_PGD_STEPS,)
            groups.append(
                dataclasses.replace(
                    g,
                    name=g.name.replace("extract_l", "extract_adv"),
                    op="extract_adv",
                    prefix="extract_adv-",
                    kind="extract_adv",
                    grid=tuple(adv.items()),
                )
            )
    return dataclasses.replace(base, groups=tuple(groups), notes=base.notes + "; PROVENANCE (standard): issue 25")


#: SAC / ModelGiF's IP-protection benchmark at the size that gives confidence intervals (issue 25):
#: PROVENANCE_QUICK's groups and recipes with 8 sources (``src_<arch>``, seeds 0-7) and 8 independents
#: (``ind_<arch>``, seeds 10-17) per architecture, every derivation applied once to each of them, plus
#: ``<base>.extract_adv`` (op ``extract_adv``: the extract-L student, then 2 epochs of PGD adversarial
#: training, eps 4/256, 5 PGD iterations). 16 positive pairs per attack column; negatives = the same attack on the 16
#: independents, and the independents themselves.
#: ``python benchmarks/provenance.py --workdir <dir>`` builds it (BUILD_NOTES.md has the time).
PROVENANCE = _provenance()
SPECS[PROVENANCE.name] = PROVENANCE
