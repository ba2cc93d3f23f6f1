"""Writes the notebooks in ``colab/`` (outputs stripped) from the cell sources below.

The notebooks are generated so that their cells stay thin and consistent: every
notebook opens with the Colab badge, an install cell that only acts on Colab, and
a ``parameters`` cell whose ``SIZE`` (``"tiny"`` in CI, ``"quick"`` by default)
selects the zoo and the method settings. Edit the cells here, then run::

    python colab/_make_notebooks.py                       # rewrite colab/*.ipynb
    python colab/_make_notebooks.py --repo myorg/jaxlineage   # another GitHub repository
    python colab/_make_notebooks.py --check               # exit 1 if a notebook is stale

``tests/test_notebooks.py`` executes every notebook on the tiny setting and checks
that the committed files equal this script's output.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import nbformat

#: The GitHub repository the badges and the Colab install cell point to (``owner/name``).
REPO = "<org>/jaxlineage"
HERE = pathlib.Path(__file__).resolve().parent

# --------------------------------------------------------------------------- shared cells

BADGE = (
    "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    "(https://colab.research.google.com/github/{repo}/blob/main/colab/{name})"
)

INSTALL = '''\
# On Colab: install jaxlineage from GitHub. Elsewhere: `pip install -e ".[notebook]"` in a clone.
import sys

if "google.colab" in sys.modules:
    %pip install -q "jaxlineage @ git+https://github.com/{repo}"'''

SIZE_LINE = """\
import os

# "tiny": seconds (what CI runs); "quick": the real zoo of the bench (minutes to build on a CPU, then cached).
SIZE = os.environ.get("JAXLINEAGE_NOTEBOOK_SIZE", "quick")"""

ZOO = """\
# The zoo is cached in $JAXLINEAGE_CACHE/<size> (default ~/.cache/jaxlineage, shared with
# `python -m jaxlineage.bench`); building is resumable and a built zoo is reused.
CACHE = pathlib.Path(os.environ.get("JAXLINEAGE_CACHE", "~/.cache/jaxlineage")).expanduser()
z = zoo.build(zoo.SPECS[SIZE], CACHE / SIZE)
print(z)"""


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(text: str, *, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def header(name: str, title: str, intro: str, parameters: str, repo: str) -> list:
    return [
        md(BADGE.format(repo=repo, name=name) + "\n\n# " + title + "\n\n" + intro.strip()),
        code(INSTALL.format(repo=repo)),
        code(SIZE_LINE + "\n" + parameters.strip("\n"), tags=("parameters",)),
    ]


# --------------------------------------------------------------------------- 01 quickstart


def quickstart(repo: str) -> list:
    return header(
        "01_quickstart.ipynb",
        "jaxlineage quickstart: learning-free lineage",
        """
Which of K candidate parents was a child network fine-tuned from? *Learning-free
lineage* (Neural Lineage, Yu & Wang, CVPR 2024, Sec. 3) compares the child's
features with each parent's features **moved by a first-order Taylor step toward the
child's weights**, `F_p + α J_p (θ_c − θ_p)`, where `J_p Δθ` is one `jax.jvp`.

This notebook builds a small zoo of MLPs with known lineage (parents trained on
Fashion-MNIST classes 0–4, children fine-tuned from them on classes 5–9), scores every
(parent, child) pair in the three modes, draws the score matrix, and runs the paper's
evaluation protocol.
""",
        """
PROBE_SIZE = {"tiny": 64, "quick": 512}[SIZE]  # probe images (the paper: 512)
METRICS = {"tiny": ("l2", "cka"), "quick": ("l1", "l2", "lp", "linf", "lse", "cka", "dcor")}[SIZE]
ALPHAS = (0.001, 0.01, 0.1)  # the paper's grid for the step size
NUM_FOLDS = {"tiny": 2, "quick": 5}[SIZE]
""",
        repo,
    ) + [
        code("""
import pathlib

import jax
import matplotlib.pyplot as plt
import numpy as np

from jaxlineage import eval as jl_eval
from jaxlineage import lineage, zoo
"""),
        md("""
## A zoo with known lineage

`zoo.build` trains whole populations at once (one jitted epoch `vmap`-ed over the
models) and stores every model with orbax plus a JSON record of its role, parent and
accuracy.
"""),
        code(ZOO),
        code("""
for r in z.parents + z.independents:
    print(f"{r.role:12s} {r.id:28s} test acc {r.test_acc:.3f}, {len(z.children_of(r.id))} children")
"""),
        md("""
## Score matrices in one call

`lineage.score_matrices` takes a feature function `f(params, x) -> [N, D]` (here the
MLP's first ReLU layer) and *stacked* parameter pytrees of the K parents and M children
(heads dropped: they differ between tasks). It returns `S[alpha, k, m]` for every
metric and mode; all of them share one forward pass per model and one jvp per pair.
The predicted parent of child `m` is `argmax_k S[k, m]`.

The accuracies printed here use every child and no held-out choice of α: a
diagnostic. The protocol at the end chooses α on held-out children.
"""),
        code("""
parents, children = z.parents, z.children
labels = np.array([[p.id for p in parents].index(c.parent_id) for c in children])  # true parent of each child
P = z.stack([p.id for p in parents], backbone=True)  # leaves [K, ...]
C = z.stack([c.id for c in children], backbone=True)  # leaves [M, ...]
feature_fn = z.feature_fn(jl_eval.default_tap(z.network))  # (params, x) -> [N, D]
x = z.probe(PROBE_SIZE)  # the first images of the children's training split

scores = lineage.score_matrices(("l2", "cka"), feature_fn, P, C, x, alpha=np.array(ALPHAS))
print(f"{len(parents)} candidate parents, {len(children)} children, alphas {ALPHAS}")
for (metric, mode), s in scores.items():
    accs = [jl_eval.metrics.accuracy(a, labels) for a in s]
    print(f"{metric:5s} {mode.value:12s} accuracy per alpha: {np.round(accs, 3)}")
"""),
        md("""
## The score matrix as a heatmap

Rows are candidate parents, columns children (grouped by their true parent, circled).
Each column is standardised for display only; the prediction (×) is its maximum.
"""),
        code("""
fig, axes = plt.subplots(1, 3, figsize=(15, 3.5), sharey=True)
for ax, mode in zip(axes, lineage.Mode):
    s = np.asarray(scores[("l2", mode)][-1])  # l2 at the largest alpha, [K, M]
    ax.imshow((s - s.mean(0)) / (s.std(0) + 1e-12), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.scatter(np.arange(len(labels)), labels, s=80, facecolors="none", edgecolors="white", label="true parent")
    ax.scatter(np.arange(len(labels)), np.asarray(lineage.predict(s)), s=30, marker="x", c="red", label="predicted")
    ax.set(title=f"l2, {mode.value}, alpha={ALPHAS[-1]}", xlabel="child")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
axes[0].set_ylabel("candidate parent")
axes[0].legend(loc="lower left", fontsize=8)
plt.show()
"""),
        md("""
## The paper's protocol (Table 1), with the baselines

The evaluation layer (`jaxlineage.eval`) asks one question of every scorer on the same
folds: `identify` makes the scenario (candidates = the parents, queries = the children,
the probe batch), and `run_all` splits the children into folds; for each fold α is
chosen on the other folds' children and the fold is scored as the test set. The table
shows the mean ± std of the test accuracy over folds for the paper's two columns
("w/o approx." = `plain`, "w approx." = `first_order`), the exact linearisation
(`linearized`), and the trivial baselines every table shows (weight-space L2 and
cosine, output agreement and KL).
"""),
        code("""
scenario = jl_eval.identify(z, probe_size=PROBE_SIZE)
scorers = jl_eval.learning_free(METRICS, alphas=ALPHAS) + jl_eval.baselines()
results = jl_eval.run_all(scenario, scorers, key=jax.random.key(0), num_folds=NUM_FOLDS)
print(f"{len(children)} children, {len(parents)} candidate parents (chance {1 / len(parents):.0%}), "
      f"{NUM_FOLDS} folds")
print(jl_eval.table(results))
"""),
    ]


# --------------------------------------------------------------------------- 02 detector


def lineage_detector(repo: str) -> list:
    return header(
        "02_lineage_detector.ipynb",
        "The Lineage Detector",
        """
The *learned* method of Neural Lineage (Sec. 4): one example is one child against all K
candidate parents. For each candidate a small CNN encodes the pair of weight matrices
(parent, child) and the pair of feature matrices on 64 probe images; a transformer
combines the two codes, and a shared linear head turns the K outputs into a softmax
over candidate parents. Children are split 7:1:2 into train / validation / test.
""",
        """
N_PROBE = {"tiny": 16, "quick": 64}[SIZE]  # probe images per feature pair (the paper: 64)
EPOCHS = {"tiny": 2, "quick": 10}[SIZE]
FOLDS = {"tiny": 2, "quick": 5}[SIZE]  # folds of the evaluation protocol (the paper: 5 random splits)
FRACTIONS = {"tiny": (0.5, 0.25, 0.25), "quick": (0.7, 0.1, 0.2)}[SIZE]  # train / val / test children
""",
        repo,
    ) + [
        code("""
import pathlib

import jax
import matplotlib.pyplot as plt
import numpy as np

from jaxlineage import detector, zoo
from jaxlineage.eval import methods, protocols, scenarios
"""),
        code(ZOO),
        md("""
## Examples

The question is an *identify* scenario of the evaluation layer: the kept children are
the queries, the kept parents the candidates. `DetectorScorer.examples` turns every
child into one example against all candidates: the weight matrices of one layer (by
default the smallest backbone layer) and the features at the first hidden layer on the
scenario's probe, each model's arrays stored once.
"""),
        code("""
scen = scenarios.identify(z)
scorer = methods.DetectorScorer(n_probe=N_PROBE, epochs=EPOCHS)
ex = scorer.examples(scen.candidates, scen.queries, probe=scen.probe, labels=scen.labels)
print(f"{len(ex)} children x {ex.num_candidates} candidates")
print(f"weights of {ex.weight_layer!r}: parents {ex.parent_weights.shape}, children {ex.child_weights.shape}")
print(f"features at {ex.feature_tap!r}: parents {ex.parent_features.shape}, children {ex.child_features.shape}")
"""),
        md("""
## Train one detector

Adam with a per-epoch step decay (×0.7); the variables of the epoch with the best
validation accuracy are kept.
"""),
        code("""
train_idx, val_idx, test_idx = detector.split_indices(len(ex), key=jax.random.key(0), fractions=FRACTIONS)
det = detector.train(ex.take(train_idx), ex.take(val_idx), key=jax.random.key(1), epochs=EPOCHS)

history = {k: [h[k] for h in det.history] for k in det.history[0]}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3))
ax1.plot(history["epoch"], history["train_loss"], label="train")
ax1.plot(history["epoch"], history["val_loss"], label="validation")
ax1.set(xlabel="epoch", ylabel="cross-entropy")
ax1.legend()
ax2.plot(history["epoch"], history["train_accuracy"], label="train")
ax2.plot(history["epoch"], history["val_accuracy"], label="validation")
ax2.set(xlabel="epoch", ylabel="accuracy")
plt.show()
print(f"best validation epoch: {det.best_epoch}")
"""),
        code("""
res = detector.assess(det, ex.take(test_idx))
print(f"test accuracy {res['accuracy']:.3f} on {res['n']} children")
for i, pred, true in zip(test_idx, res["predictions"], res["labels"]):
    print(f"  {ex.child_ids[i]}: predicted {ex.parent_ids[pred]}, true {ex.parent_ids[true]}")
"""),
        md("""
## The protocol: folds, every method on the same ones

`protocols.run` splits the children into folds; for each fold the detector is fitted
on the other folds (a share of them picks the epoch) and scores the held-out children.
The accuracy is the mean ± sample std over folds; the baselines on the same folds
(`scorers.baselines()`) make the table's other rows. An open-set scenario
(`scenarios.identify(z, queries=("child", "independent"), open_set=True)`) adds the
"no parent" answer.
"""),
        code("""
from jaxlineage.eval import scorers

results = protocols.run_all(scen, [scorer, *scorers.baselines()], key=jax.random.key(0), num_folds=FOLDS)
print(f"{len(scen.queries)} children, {len(scen.candidates)} candidates (chance {1 / len(scen.candidates):.0%})")
print(protocols.table(results))
"""),
    ]


# --------------------------------------------------------------------------- 03 model DNA


def model_dna(repo: str) -> list:
    return header(
        "03_model_dna.ipynb",
        "Model DNA (MGMP): is this model derived from mine?",
        """
MGMP (Mu et al., "Model Provenance via Model DNA", ECAI 2024) learns, for one *source*
model, a DNA generator `z = g(x)` over the source's training inputs and a provenance
classifier on pairs of *DNA fragments* `o = [z ; M(x)]`. Trained contrastively on a
pool of models known to be derived from the source (homologous) or not, it then
decides for an unseen target: the fraction of its fragments classified homologous,
thresholded at δ.
""",
        """
NUM_INPUTS = {"tiny": 256, "quick": 2048}[SIZE]  # DNA inputs from the source's training data
CONFIG = {"tiny": dict(num_steps=40, batch_size=32), "quick": dict()}[SIZE]  # mgmp.Config fields
FOLDS = {"tiny": 2, "quick": 5}[SIZE]  # folds of the evaluation protocol
""",
        repo,
    ) + [
        code("""
import dataclasses
import pathlib

import jax
import matplotlib.pyplot as plt
import numpy as np

from jaxlineage import mgmp, zoo
from jaxlineage.eval import methods, protocols, scenarios, scorers
from jaxlineage.models import Models
"""),
        code(ZOO),
        md("""
## One source model and its pool

The source is the first parent. The pool holds all but one of its children
(homologous), and one child of every other parent plus all but one independent model
(non-homologous). The held-out child and independent are the evaluation targets.
"""),
        code("""
def population(ids):  # models of one task: one pure apply function and stacked params
    return Models.from_apply(z.network_for(ids[0]).logits_fn, z.stack(ids), stacked=True, ids=tuple(ids))


source = z.parents[0]
own = z.children_of(source.id)
others = [z.children_of(p.id)[0].id for p in z.parents[1:] if z.children_of(p.id)]
pool = mgmp.Pool(
    homologous=population([c.id for c in own[:-1]]),
    non_homologous=population(others + [r.id for r in z.independents[:-1]]),
)
targets = {"held-out child (homologous)": own[-1].id, "held-out independent (not homologous)": z.independents[-1].id}

parent_task = z.spec.parent_task.name
x_dna = z.task_data(parent_task, "train")[0][:NUM_INPUTS]  # the source's training inputs
source_net = (z.network.logits_fn, z.load(source.id))  # any (apply_fn, params)
config = mgmp.Config(**CONFIG)
state, history = mgmp.train(source_net, pool, x_dna, config, key=jax.random.key(0))

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3))
ax1.plot(history["loss"], label="total")
ax1.plot(history["bce"], label="classifier BCE")
ax1.set(xlabel="step", ylabel="loss")
ax1.legend()
ax2.plot(history["train_accuracy"])
ax2.set(xlabel="step", ylabel="fragment accuracy (train)")
plt.show()
"""),
        md("""
## Decide for unseen targets

Fragments are built on the source task's *test* inputs (never seen in training).
"""),
        code("""
state_eval = mgmp.with_inputs(state, source_net, z.task_data(parent_task, "test")[0])
for what, target_id in targets.items():
    pred = mgmp.predict(state_eval, (z.network_for(target_id).logits_fn, z.load(target_id)))
    print(f"{what}: {float(pred.fraction):.1%} of fragments homologous -> "
          f"{'derived from' if bool(pred.homologous) else 'not derived from'} the source (delta={config.delta})")
"""),
        md("""
## The evaluation protocol, with and without the generator

The question "is candidate c an ancestor of model m" is a *verify* scenario: parents
against children and independents, in folds by fine-tuning learning rate (the test
children were fine-tuned at a rate the training children never used, and every parent
keeps children in every training fold). `ModelDNAScorer` trains one generator + classifier
per parent on the training folds (its children homologous, every other model not) and
scores the held-out models by their fraction of homologous fragments, built on the
parents' training inputs (the scenario's probe is replaced by `x_dna`); the baseline uses
the model outputs alone as fragments. ROC AUC and TPR at low FPR, mean ± sample std
over folds, next to the trivial baselines on the same folds.
"""),
        code("""
scen = scenarios.verify(z, split_by="lr")  # one fold per fine-tuning learning rate
scen = dataclasses.replace(scen, probe=x_dna)  # D_s: the sources' training inputs, as in the paper
dna = [
    methods.ModelDNAScorer(config=config),
    methods.ModelDNAScorer(config=dataclasses.replace(config, generator=mgmp.Generator.NONE)),
]
results = protocols.run_all(scen, dna + scorers.baselines(), key=jax.random.key(0), num_folds=FOLDS)
print(protocols.table(results))
"""),
    ]


# --------------------------------------------------------------------------- 04 ModelGiF


def modelgif_notebook(repo: str) -> list:
    return header(
        "04_modelgif.ipynb",
        "ModelGiF: gradient fields and functional distance",
        """
ModelGiF (Song et al., ICCV 2023) describes a model by its *gradient field* at reference
inputs: the cumulative integrated gradients `G_k(x)` along the path from a baseline
`x0` to `x` (K Gauss–Legendre nodes; `G_K` is Integrated Gradients). Two models are
close when their fields point the same way: distance = mean over references and nodes
of `1 − cos(G^A_k(x), G^B_k(x))`. Only the input space has to agree, so it compares
models of any architectures.
""",
        """
STEPS = {"tiny": 4, "quick": 20}[SIZE]  # quadrature nodes K (the paper: 50)
N_REFS = {"tiny": (2, 4, 8), "quick": (8, 32, 128, 256)}[SIZE]  # reference counts of the sweep
N_SHOW = 4  # references drawn below
""",
        repo,
    ) + [
        code("""
import pathlib

import jax
import matplotlib.pyplot as plt
import numpy as np

from jaxlineage import modelgif, zoo
from jaxlineage.eval import methods, scenarios
"""),
        code(ZOO),
        md("""
## The fields of a parent, its child and an independent model

Each row shows one model's Integrated Gradients `G_K(x)` (the last step of its field)
at the same reference images of the children's task.
"""),
        code("""
child_task = z.spec.child_tasks[0].name
x_ref = z.task_data(child_task, "test")[0][:N_SHOW]
parent = z.parents[0]
models = {"parent": parent, "child": z.children_of(parent.id)[0], "independent": z.independents[0]}
fields = {name: modelgif.gradient_field(z.network_for(r.id).logits_fn, z.load(r.id), x_ref, steps=STEPS)
          for name, r in models.items()}  # each [N_SHOW, STEPS, 784]

fig, axes = plt.subplots(len(fields), N_SHOW, figsize=(2 * N_SHOW, 6))
for row, (name, g) in zip(axes, fields.items()):
    for n, ax in enumerate(row):
        ig = np.asarray(g[n, -1]).reshape(x_ref.shape[1:3])
        ax.imshow(ig, cmap="RdBu_r", vmin=-abs(ig).max(), vmax=abs(ig).max())
        ax.set_xticks([]), ax.set_yticks([])
    row[0].set_ylabel(name)
plt.show()
for name in ("child", "independent"):
    print(f"distance(parent, {name}) = {float(modelgif.distance(fields['parent'], fields[name])):.3f}")
"""),
        md("""
## Detection by distance, as in the paper

The question is a *verify* scenario of the evaluation layer: parents against their
children and the independents. `ModelGiFScorer.per_reference` computes the fields of
every parent and of every child and independent model (`vmap`-ed over the models,
chunked over references) and their distance at each reference; pairs are scored by
`−distance`. The references are a seeded draw from the scenario's probe, made
without looking at any model.
"""),
        code("""
scen = scenarios.verify(z, task=child_task)
gif = methods.ModelGiFScorer(n_refs=max(N_REFS), steps=STEPS, key=jax.random.key(0))
distances = gif.per_reference(scen.candidates, scen.queries, probe=scen.probe)  # [parents, queries, refs]
n_children = int(scen.related.any(axis=0).sum())

plt.figure(figsize=(10, 2.5))
plt.imshow(distances.mean(-1), aspect="auto", cmap="viridis_r", interpolation="nearest")
plt.colorbar(label="ModelGiF distance")
plt.axvline(n_children - 0.5, color="white")
plt.xlabel(f"{n_children} children | {len(scen.queries) - n_children} independents")
plt.yticks(range(len(scen.candidates)))
plt.ylabel("parent")
plt.show()
"""),
        md("""
The ROC AUC of "own child vs independent" as a function of the number of reference
points (`methods.reference_sweep`: prefixes of one draw), for the paper's field (the
logit of the predicted class) and for the *backbone* field (`field="relu1"`: the
gradient of the first hidden layer's sum), which ignores the heads that the children
re-initialised for their task.
"""),
        code("""
backbone = methods.ModelGiFScorer(field="relu1", n_refs=max(N_REFS), steps=STEPS, key=jax.random.key(0))
independent = ~scen.related.any(axis=0)[None, :] & ~scen.related  # (parent, independent) pairs
print(f"{'field':7s} {'refs':>5s} {'AUC':>6s} {'TPR@5%FPR':>10s} {'mean d(own child)':>18s} {'mean d(indep.)':>15s}")
backbone_distances = backbone.per_reference(scen.candidates, scen.queries, probe=scen.probe)
for label, d in (("logits", distances), ("relu1", backbone_distances)):
    for p in methods.reference_sweep(d, scen.related, independent, n_refs=N_REFS):
        print(f"{label:7s} {p.n_refs:5d} {p.auc:6.3f} {p.tpr_at_5:10.3f} {p.mean_pos:18.3f} {p.mean_neg:15.3f}")
"""),
    ]


# --------------------------------------------------------------------------- 05 your own models


def your_own_models(repo: str) -> list:
    return header(
        "05_your_own_models.ipynb",
        "Bring your own models",
        """
Every method in jaxlineage works on one contract: a pure `apply_fn(params, x) -> array`
and a `params` pytree. Flax NNX models (`nets.from_nnx`), linen modules
(`nets.from_linen`) and hand-written JAX functions all fit. This notebook trains a few
NNX models with plain optax (your own training code, nothing from jaxlineage), then
uses the linearised metrics on them directly, and shows how to import them into
other JAX code.
""",
        """
HIDDEN = {"tiny": 32, "quick": 256}[SIZE]  # width of the models below
STEPS = {"tiny": 100, "quick": 1000}[SIZE]  # Adam steps per model
PROBE_SIZE = {"tiny": 64, "quick": 512}[SIZE]
""",
        repo,
    ) + [
        code("""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen, nnx

from jaxlineage import data, lineage, linearize, modelgif, nets, similarity
from jaxlineage.eval import metrics
"""),
        md("""
## Your models and your training code

An NNX MLP with a `features` method, and a generic Adam loop over any
`apply_fn(params, x)`. Data: the embedded Fashion-MNIST subset, task A (classes 0–4)
for "pre-training", task B (classes 5–9) for "fine-tuning".
"""),
        code("""
class MLP(nnx.Module):
    def __init__(self, hidden, classes, *, rngs):
        self.hidden = nnx.Linear(28 * 28, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, classes, rngs=rngs)

    def features(self, x):
        return nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))

    def __call__(self, x):
        return self.out(self.features(x))


@functools.partial(jax.jit, static_argnames=("apply_fn", "steps"))
def fit(apply_fn, params, x, y, *, steps, lr=1e-3, seed=0):
    opt = optax.adam(lr)

    def step(carry, idx):
        params, opt_state = carry
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x[idx]), y[idx]).mean()
        updates, opt_state = opt.update(jax.grad(loss)(params), opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    batches = jax.random.randint(jax.random.key(seed), (steps, 64), 0, y.shape[0])
    return jax.lax.scan(step, (params, opt.init(params)), batches)[0][0]


xa, ya = map(jnp.asarray, data.task("embedded", data.TASK_A, "train"))
xb, yb = map(jnp.asarray, data.task("embedded", data.TASK_B, "train"))
"""),
        md("""
`nets.from_nnx(model)` gives `(apply_fn, state)`: `apply_fn` rebuilds the model from an
`nnx.State` with `nnx.merge`, so it is pure and can be jitted, vmapped and
differentiated. A feature function is just another such function.
"""),
        code("""
apply_fn, _ = nets.from_nnx(MLP(HIDDEN, 5, rngs=nnx.Rngs(0)))
graphdef, _ = nnx.split(MLP(HIDDEN, 5, rngs=nnx.Rngs(0)))


def feature_fn(state, x):  # (params, x) -> [N, HIDDEN]
    return nnx.merge(graphdef, state).features(x)


# Three "pre-trained" parents (different seeds), each fine-tuned twice; one independent model.
parents = [fit(apply_fn, nets.from_nnx(MLP(HIDDEN, 5, rngs=nnx.Rngs(s)))[1], xa, ya, steps=STEPS, seed=s)
           for s in range(3)]
children, labels = [], []
for k, p in enumerate(parents):
    for s, lr in enumerate((1e-3, 3e-3)):
        children.append(fit(apply_fn, p, xb, yb, steps=STEPS, lr=lr, seed=10 + s))
        labels.append(k)
labels = np.array(labels)
independent = fit(apply_fn, nets.from_nnx(MLP(HIDDEN, 5, rngs=nnx.Rngs(99)))[1], xb, yb, steps=STEPS, seed=99)
x = xb[:PROBE_SIZE]  # probe: the children's training inputs
"""),
        md("""
## One pair: similarity in the three modes

`linearize.pair_similarity(metric, feature_fn, parent, child, x, alpha=..., mode=...)`
(higher = more similar). An α sweep costs one jvp in total.
"""),
        code("""
alphas = jnp.array([0.01, 0.1, 1.0])
for mode in linearize.Mode:
    own = linearize.pair_similarity("l2", feature_fn, parents[0], children[0], x, alpha=alphas, mode=mode)
    other = linearize.pair_similarity("l2", feature_fn, parents[1], children[0], x, alpha=alphas, mode=mode)
    print(f"{mode.value:12s} l2 to the true parent {np.round(np.asarray(own), 4)}, "
          f"to another parent {np.round(np.asarray(other), 4)}")
"""),
        md("""
## Populations: stack the pytrees

`nets.stack` stacks any same-structure pytrees (here `nnx.State`s) along a new leading
axis; `lineage.score_matrices` scores all parents against all children for several
metrics and modes at once (`lineage.score_matrix` for one).
"""),
        code("""
P, C = nets.stack(parents), nets.stack(children)
scores = lineage.score_matrices(("l2", "cka"), feature_fn, P, C, x, alpha=0.1)  # {(metric, mode): [K, M]}
print(f"true parents {labels}")
for (metric, mode), S in scores.items():
    print(f"{metric:3s} {mode.value:12s} predicted parents {np.asarray(lineage.predict(S))}, "
          f"accuracy {float(metrics.accuracy(S, labels)):.2f}")
"""),
        md("""
## Linen modules and plain functions

`nets.from_linen(module, variables)` is `module.apply`; any `apply_fn(params, x)` works
as is. ModelGiF compares models across architectures: only the input space must agree.
It measures *functional* distance, so models trained on the parent's task (the linen
MLP, the linear model) can be closer to the parent than its child, which was
fine-tuned to another task.
"""),
        code("""
class LinenMLP(linen.Module):
    @linen.compact
    def __call__(self, x):
        return linen.Dense(5)(linen.relu(linen.Dense(HIDDEN)(x.reshape(x.shape[0], -1))))


module = LinenMLP()
linen_apply, linen_params = nets.from_linen(module, module.init(jax.random.key(7), x[:1]))
linen_params = fit(linen_apply, linen_params, xa, ya, steps=STEPS, seed=7)


def plain_apply(w, x):  # a hand-written linear classifier
    return x.reshape(x.shape[0], -1) @ w


plain_w = fit(plain_apply, jnp.zeros((28 * 28, 5)), xa, ya, steps=STEPS)

refs = xa[:8]
field = lambda f, p: modelgif.gradient_field(f, p, refs, steps=8)
g_parent = field(apply_fn, parents[0])
for name, (f, p) in {"its child (NNX)": (apply_fn, children[0]), "independent (NNX)": (apply_fn, independent),
                     "linen MLP": (linen_apply, linen_params), "plain linear": (plain_apply, plain_w)}.items():
    print(f"ModelGiF distance parent 0 -> {name}: {float(modelgif.distance(g_parent, field(f, p))):.3f}")
"""),
        md("""
## Import the metrics into your own code

The metrics are pure `jnp` functions on `[N, D]` feature matrices (jit, grad and vmap
work); `similarity.custom` plugs your own metric into every mode, including the
first-order one (a jvp through your metric).
"""),
        code("""
F_p, F_c = feature_fn(parents[0], x), feature_fn(children[0], x)
print("cka:", float(similarity.cka(F_p, F_c)), " dcor:", float(similarity.dcor(F_p, F_c)))

# A differentiable objective: d cka(f(theta, x), F_c) / d theta, e.g. for a regulariser.
grads = jax.grad(lambda theta: similarity.cka(feature_fn(theta, x), F_c))(parents[0])
print("gradient norm:", float(optax.global_norm(grads)))


def cosine(a, b):  # higher = more similar
    return jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))


cos_metric = similarity.custom(cosine, name="cosine")
S = lineage.score_matrix(cos_metric, feature_fn, P, C, x, alpha=0.1, mode=linearize.Mode.FIRST_ORDER)
"""),
        code("""
print(f"custom metric 'cosine', first order, alpha=0.1: accuracy {float(metrics.accuracy(S, labels)):.2f} "
      f"({len(labels)} children, {len(parents)} candidate parents)")
for m, (true, pred) in enumerate(zip(labels, np.asarray(lineage.predict(S)))):
    print(f"  child {m}: true parent {true}, predicted {pred}, scores {np.round(np.asarray(S[:, m]), 4)}")
"""),
    ]


# --------------------------------------------------------------------------- writing

# --------------------------------------------------------------------------- 06 is this my model?


def is_this_my_model(repo: str) -> list:
    return header(
        "06_is_this_my_model.ipynb",
        "Is this my model? `verify` and `identify` on your own Flax models",
        """
You trained a model; someone publishes one that looks like it. Was theirs derived from yours
(fine-tuned, pruned, quantised, permuted, distilled)? `jaxlineage.verify` answers with a
p-value per evidence test and one combined p-value, valid under a stated null hypothesis.
This notebook defines its own linen module (no `jaxlineage.nets`), trains models with plain
optax on the embedded Fashion-MNIST subset, builds reference models with
`jaxlineage.references.train`, and asks `verify` and `identify`.
""",
        """
STEPS = {"tiny": 150, "quick": 600}[SIZE]  # Adam steps per model
# Reference models: the pooled test's smallest p-value is 1 / (N_REFS + 1), and verify's Bonferroni
# combination doubles it: 39 decide alone at alpha = 0.05, 199 at 0.01 (the tiny run's 19 get a warning).
N_REFS = {"tiny": 19, "quick": 99}[SIZE]
PERMUTATIONS = {"tiny": 199, "quick": 999}[SIZE]
""",
        repo,
    ) + [
        code("""
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxlineage as jl
from jaxlineage import data, references

CACHE = pathlib.Path(os.environ.get("JAXLINEAGE_CACHE", "~/.cache/jaxlineage")).expanduser() / "references"


class MyNet(nn.Module):  # your module, your layer names
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(128, name="encoder")(x.reshape((x.shape[0], -1))))
        return nn.Dense(5, name="classifier")(h)


def train(variables, x, y, steps, lr=1e-3, seed=0):  # your own training loop
    tx = optax.adam(lr)

    @jax.jit
    def step(v, o, idx):
        def loss(v):
            return optax.softmax_cross_entropy_with_integer_labels(MyNet().apply(v, x[idx]), y[idx]).mean()

        u, o = tx.update(jax.grad(loss)(v), o, v)
        return optax.apply_updates(v, u), o

    opt = tx.init(variables)
    for t in range(steps):
        idx = jax.random.randint(jax.random.key(seed * 10_000 + t), (64,), 0, len(x))
        variables, opt = step(variables, opt, idx)
    return variables


x, y = map(jnp.asarray, data.task("fashion_mnist", (0, 1, 2, 3, 4), source="embedded"))
x_other, y_other = map(jnp.asarray, data.task("fashion_mnist", (0, 1, 2, 3, 4), source="embedded", split="test"))
probe = x_other[512:]  # held-out inputs of your task (your model never trained on them): verify's data
init = lambda seed: MyNet().init(jax.random.key(seed), x[:1])
mine = train(init(1), x, y, STEPS, seed=1)
"""),
        md("""
## Suspects

A fine-tuned copy of your model, a pruned copy, a copy with its hidden units permuted (same
function, shuffled weights), and an unrelated model trained from another initialisation.
"""),
        code("""
finetuned = train(mine, x_other[:512], y_other[:512], STEPS // 3, lr=3e-4, seed=7)
pruned = jax.tree.map(lambda w: jnp.where(jnp.abs(w) < jnp.quantile(jnp.abs(w), 0.5), 0.0, w), mine)
perm = np.random.default_rng(0).permutation(128)
permuted = jax.tree.map(lambda w: w, mine)
permuted["params"]["encoder"] = {k: v[..., perm] for k, v in mine["params"]["encoder"].items()}
head = mine["params"]["classifier"]
permuted["params"]["classifier"] = {"kernel": head["kernel"][perm], "bias": head["bias"]}
unrelated = train(init(2), x, y, STEPS, seed=2)

def models(trees, ids):  # the same taps on every Models of one architecture
    return jl.Models.from_linen(MyNet(), trees, ids=ids, taps=("encoder",), example=x[:2])


me = models([mine], ["mine"])
suspects = models([finetuned, pruned, permuted, unrelated], ["finetuned", "pruned", "permuted", "unrelated"])
"""),
        md("""
## Without references: the exact weight test alone

A hidden-unit permutation test on the weights: exact under "independent initialisations",
strong on fine-tuned and pruned copies, and blind to a permuted copy (its units are shuffled).
"""),
        code("""
print(jl.verify(me, suspects, data=probe, num_permutations=PERMUTATIONS))
"""),
        md("""
## With references: functional tests with conformal p-values

Reference models are independent models **made like your model**: its architecture, its data and
its recipe (`references.train` uses the library's population trainer with your optimiser settings
and caches them on disk). With `references_like="source"` each test asks whether the suspect is
closer to your model than to the references: `s(mine, suspect)` ranked among `s(R_j, suspect)`.
That is valid for *any* unrelated suspect, however it was made (pruned, distilled, moved to another
task), as long as your model is exchangeable with the references, which you control because you
know how you trained it. (The default, `references_like="suspect"`, asks instead that an unrelated
suspect be exchangeable with the references, which an attacked independent model need not be.)
`data=` is `probe`, held-out inputs of your task; training inputs do as well (the benchmark measured
both, with alike power).

The output KL / agreement, matched-weight, Taylor, ModelGiF and SAC-m tests see the permuted copy,
which the weight test cannot. They enter the verdict together, as one pooled conformal test (column
`references`), so its p-value is at least `1 / (N_REFS + 1)` however many tests there are. The
verdict combines it with the weight test by Bonferroni (twice the smaller p-value), so a test blind
to the attack costs a factor 2 and never vetoes. With the tiny setting's 19 references the floor is
alpha itself, so the combined verdict on the permuted copy lands above alpha (0.1); the quick
setting's 99 references lower the floor to 0.01 (0.02 combined).
"""),
        code("""
# Made like `mine`: the same architecture, data, optimiser, batch size and number of steps.
EPOCHS = max(1, round(STEPS * 64 / len(x)))
refs = references.train(me, x, y, n=N_REFS, epochs=EPOCHS, lr=1e-3, batch_size=64, workdir=CACHE)
verdict = jl.verify(
    me, suspects, data=probe, references=refs, references_like="source", num_permutations=PERMUTATIONS
)
print(verdict)
"""),
        md("""
## Which of several candidates is the parent?

`identify` runs `verify` for every candidate and applies Holm's procedure over them: a parent,
or "no parent" when no candidate is rejected at alpha. The candidates are trained like the
references, so the references stand in for each of them.
"""),
        code("""
someone_else = train(init(3), x, y, STEPS, seed=3)  # a candidate that is nobody's parent here
candidates = models([someone_else, mine], ["someone_else", "mine"])
print(
    jl.identify(
        suspects, candidates, data=probe, references=refs, references_like="source", num_permutations=PERMUTATIONS
    )
)
"""),
    ]


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_lineage_detector.ipynb": lineage_detector,
    "03_model_dna.ipynb": model_dna,
    "04_modelgif.ipynb": modelgif_notebook,
    "05_your_own_models.ipynb": your_own_models,
    "06_is_this_my_model.ipynb": is_this_my_model,
}


def build(repo: str = REPO) -> dict[str, str]:
    """``{file name: notebook JSON text}``, outputs stripped, deterministic cell ids."""
    out = {}
    for name, make in NOTEBOOKS.items():
        cells = make(repo)
        for i, cell in enumerate(cells):
            cell.id = f"cell-{i:02d}"
        nb = nbformat.v4.new_notebook(
            cells=cells,
            metadata={
                "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                "language_info": {"name": "python"},
                "colab": {"provenance": []},
            },
        )
        nbformat.validate(nb)
        out[name] = nbformat.writes(nb) + "\n"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=REPO, help="GitHub owner/name for the badges and the install cell")
    parser.add_argument("--check", action="store_true", help="only check that the notebooks are up to date")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build(args.repo).items():
        path = HERE / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    if args.check:
        print("stale: " + ", ".join(stale) if stale else "up to date")
        return 1 if stale else 0
    print(f"wrote {len(stale)} of {len(NOTEBOOKS)} notebooks" + (f": {', '.join(stale)}" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
