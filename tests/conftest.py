"""Test configuration: 4 forced CPU devices (for sharding tests) and strict numerics."""

import os
import shutil
import tempfile

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAXLINEAGE_NO_PROGRESS", "1")
#: JAX's persistent compilation cache, shared by the two xdist workers and the notebooks' kernels (both inherit
#: this environment): the suite compiles the same small programs in many modules (JAX's in-memory caches are
#: cleared after each one, below) and in every notebook. The folder is made fresh by the process that starts the
#: run (xdist's controller, before it starts the workers) and removed when the run ends, so every run starts cold,
#: as on a clean machine, and two runs never share one; a folder the user set in ``JAX_COMPILATION_CACHE_DIR`` is
#: used as it is and never removed. Every compilation is kept (no minimum compile time): the eager ops' small
#: programs are most of the repeats.
OWN_COMPILATION_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if OWN_COMPILATION_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxlineage-tests-compilation-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

import gc  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def random_variables(network, seed: int):
    """Random variables of ``network`` made with numpy from the shapes ``jax.eval_shape`` gives, without
    compiling its init (a ResNet-18's init takes ~8 s to compile on 2 cores, and op by op longer).

    Kernels and embeddings ~ N(0, 1 / fan-in); BatchNorm / LayerNorm scales and variances 1 + |N(0, 0.3)|
    (positive, and not all 1, so that permuting them is visible); biases and means ~ N(0, 0.1).
    """
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = getattr(path[-1], "key", "")
        if name in ("scale", "var"):
            value = 1.0 + 0.3 * np.abs(rng.normal(size=s.shape))
        elif name in ("bias", "mean") or len(s.shape) < 2:
            value = 0.1 * rng.normal(size=s.shape)
        else:
            value = rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
        return jax.numpy.asarray(value, s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, jax.eval_shape(network.init, jax.random.key(0)))


def pytest_unconfigure(config):
    if OWN_COMPILATION_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after each test module.

    Every XLA:CPU executable keeps about three memory mappings alive for as long as a JAX cache holds it,
    and the suite compiles tens of thousands of them (eager ops on new shapes included). In one process
    that reaches the kernel's limit on mappings per process (``vm.max_map_count``, 65530 by default),
    after which LLVM's next allocation fails and the process dies with a segmentation fault inside
    ``backend_compile``. Clearing the caches between modules keeps the count at one module's worth.
    """
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The TINY zoo (2 parents, 4 children, 2 independents), built once per test session."""
    from jaxlineage import zoo

    return zoo.build(zoo.TINY, tmp_path_factory.mktemp("tiny_zoo"), progress=False)


#: Fixtures that build a zoo of their own or run the bench end to end (a minute or more each on the
#: 2-core machine): the tests that use them belong to the slow tier.
SLOW_FIXTURES = frozenset({"ops_zoo", "tiny_run"})
#: Docstring examples and parametrised cases measured over 6 s on 2 loaded cores (a marker cannot be written on
#: a doctest, and these cases' siblings are fast).
SLOW_CASES = frozenset(
    {
        "jaxlineage/eval/scenarios.py::jaxlineage.eval.scenarios",
        "jaxlineage/verify.py::jaxlineage.verify",
        "tests/test_eval.py::test_contract_shape_and_known_answer[detector:lineage_detector]",
        "tests/test_eval.py::test_contract_shape_and_known_answer[mgmp:model_dna]",
        "tests/test_detector.py::test_permuting_candidates_permutes_logits[False-Block.PRE_LN]",
        "tests/test_fastpath.py::test_fast_path_equals_plain_jvp_path_float64[user_apply]",
        "tests/test_permutations.py::test_permutation_keeps_function_changes_weights[convnet]",
        "tests/test_eval.py::test_contract_deterministic_and_no_recompile[detector:lineage_detector]",
        "tests/test_verify.py::test_permutation_null_equals_statistic_on_explicitly_permuted_copies[convnet]",
        "tests/test_eval.py::test_contract_bad_input_names_the_model[detector:lineage_detector]",
        # 2-7 s each, moved out of the fast tier in the tenth session (it had reached 3 min 04 s)
        "tests/test_eval.py::test_contract_deterministic_and_no_recompile[mgmp:model_dna]",
        "tests/test_eval.py::test_grid_cache_scores_only_new_pairs_and_changes_nothing",
        "tests/test_tree.py::test_aligned_scores_never_exceed_raw_and_candidates_restrict_the_pairs",
        "tests/test_tree.py::test_learning_free_scores_are_score_matrices_over_ordered_pairs",
        "tests/test_fastpath.py::test_gram_pair_scores_equal_the_definitions_float64",
        "tests/test_tree.py::test_aligned_weight_scores_find_a_permuted_copy",
        "tests/test_tree.py::test_taylor_asymmetry_matches_its_closed_form_and_points_to_the_child",
        "tests/test_tree.py::test_aligned_weight_scores_logs_progress_with_an_eta",
        "tests/test_tree.py::test_importing_tree_does_not_import_matplotlib",
        "tests/test_eval.py::test_contract_shape_and_known_answer[conferrable:conferrable]",
        "tests/test_lineage.py::test_predict_probabilities",
        "tests/test_hub.py::test_build_keeps_the_requested_order_when_a_source_regroups",
        "tests/test_modelgif.py::test_scorer_sweep_separates_children_from_independents",
    }
)


#: Scheduling on two xdist workers (``--dist loadgroup``): a test file is one unit (its module fixtures are
#: built once). xdist hands out the units with the most tests first, so the few long end-to-end runs of these
#: files would come last and leave one worker alone at the end: they form one unit of ~30 tests (~14 min of
#: one worker), handed out first, while the other worker takes the rest.
END_TO_END = frozenset(
    {
        "tests/test_bench.py",
        "tests/test_presets.py",
        "tests/test_notebooks.py",
        "tests/test_benchmark_helpers.py",
    }
)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.nodeid in SLOW_CASES:
            item.add_marker(pytest.mark.slow)
        path = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group("end-to-end" if path in END_TO_END else path))
