"""The extension's CUDA kernels, held to their design by their compiled code (no GPU: nothing runs).

ops_cuda.cu is compiled here with the extension's flags for every architecture a GPU-less build targets
(_build.DEFAULT_ARCHS) and read back with ptxas' report and nvdisasm (fastpggan._static). At every architecture:
no kernel touches local memory (0-byte stack frame, no spills, no LDL/STL), the streaming kernels move 16 bytes per
global load and store, and no kernel calls a 64-bit integer division routine. At sm_90, no kernel falls under 50 %
theoretical occupancy at its 256-thread blocks. tests/fixtures/cuda/runtime_tail.cu proves the local-memory check
can fail: it is the tail pattern that put 9 of our sm_90 kernels on the stack before commit 5517d93.
"""

import os

import pytest

from fastpggan import _build, _static

pytestmark = pytest.mark.skipif(
    _build.find_cuda_home() is None or _static.tools_dir() is None,
    reason="no CUDA toolkit (nvcc) or no nvdisasm (Triton) on this machine",
)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "cuda", "runtime_tail.cu")
# The kernels that stream tensors: their instantiations with V = 16 bytes / element size must use 128-bit
# accesses (each also has a V = 1 form for misaligned or odd-sized tensors).
VECTORIZED = (
    "bias_act_kernel",
    "bias_act_grad_kernel",
    "fade_same_fwd_kernel",
    "fade_same_bwd_kernel",
    "fade_up_fwd_nchw_kernel",
    "fade_up_fwd_cl_kernel",
    "fade_up_bwd_nchw_kernel",
    "fade_up_bwd_cl_kernel",
    "gp_interpolate_kernel",
    "gp_grad_kernel",
    "pn_fwd_rows_kernel",
    "pn_bwd_rows_kernel",
    "mbstd_concat_nchw_kernel",
)
VECTOR = {"float": 4, "c10::BFloat16": 8, "c10::Half": 8, "double": 2}
OCCUPANCY_FLOOR = 0.5  # no exception is needed today
# (arch, kernel base name) -> why it may use local memory. Empty since 5517d93; an entry whose kernel no longer
# uses local memory fails the test until it is taken off.
LOCAL_MEMORY_EXCEPTIONS: dict = {}
_compiled = {}


def compiled(arch, tmp_path_factory):
    if arch not in _compiled:
        _compiled[arch] = _static.kernels(*_static.compile_cubin(arch, str(tmp_path_factory.mktemp(arch))))
    return _compiled[arch]


@pytest.fixture(scope="module")
def sm90(tmp_path_factory):
    return compiled("sm_90", tmp_path_factory)


def _base(name):
    return name.split("<", 1)[0]


def _template(name):
    return [a.strip() for a in name.split("<", 1)[1].split(">(", 1)[0].split(",")]


def local_memory_breaches(table, arch, exceptions):
    """{kernel: what it does in local memory} for the kernels of `table` not excused at `arch`, plus a line for
    each exception that no longer applies."""
    out = {n: k.local_memory for n, k in table.items() if k.local_memory and (arch, _base(n)) not in exceptions}
    used = {(arch, _base(n)) for n, k in table.items() if k.local_memory}
    out.update(
        {
            f"exception {key}": "no longer uses local memory; take it off the list"
            for key in exceptions
            if key[0] == arch and key not in used
        }
    )
    return out


def narrow_streaming_kernels(table):
    """{kernel: why} for the streaming kernels whose vector form lacks 128-bit loads or stores."""
    out, checked = {}, 0
    for name, k in table.items():
        if _base(name) not in VECTORIZED:
            continue
        args = _template(name)
        dtype, v = args[0], int(args[2])
        # the vector form: V elements of 16 bytes; the NCHW upsampling backward takes V/2 low columns per thread
        vector = args[3] == "true" if _base(name) == "fade_up_bwd_nchw_kernel" else v == VECTOR[dtype]
        if vector:
            checked += 1
            if not (k.ld128 >= 1 and k.st128 >= 1):
                out[name] = f"{k.ld128} 128-bit loads, {k.st128} 128-bit stores"
        elif v != 1:
            out[name] = f"V = {v}: neither the vector nor the scalar form"
    if checked != (len(VECTORIZED) + 1) * len(VECTOR):  # bias_act twice: bias per row (NCHW) or per column
        out["(count)"] = f"{checked} vector forms found"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", _static.build_archs())
def test_every_architecture_keeps_the_design(arch, tmp_path_factory):
    """At each architecture of a GPU-less build: nothing in local memory, 16-byte streaming, no 64-bit division."""
    table = compiled(arch, tmp_path_factory)
    assert len(table) >= 100 and all(k.registers > 0 for k in table.values())
    assert not local_memory_breaches(table, arch, LOCAL_MEMORY_EXCEPTIONS)
    assert not narrow_streaming_kernels(table)
    assert not {n: k.int64_division for n, k in table.items() if k.int64_division}


def test_the_local_memory_check_flags_the_old_tail_pattern(tmp_path):
    """The pre-5517d93 tail (arrays indexed by a runtime count) is flagged; the same kernel with tail.h is not."""
    table = _static.kernels(*_static.compile_cubin("sm_90", str(tmp_path), source=FIXTURE))
    assert set(table) == {"runtime_tail", "predicated_tail"}
    old, new = table["runtime_tail"], table["predicated_tail"]
    assert old.stack_bytes > 0 and old.local_loads > 0 and old.local_stores > 0, old
    assert local_memory_breaches(table, "sm_90", {}) == {"runtime_tail": old.local_memory}
    assert new.local_memory is None and new.ld128 == 2 and new.st128 == 1, new
    # an exception excuses it, and one that no longer applies is reported
    assert not local_memory_breaches(table, "sm_90", {("sm_90", "runtime_tail"): "fixture"})
    assert list(
        local_memory_breaches(
            table, "sm_90", {("sm_90", "runtime_tail"): "fixture", ("sm_90", "predicated_tail"): "stale"}
        )
    ) == ["exception ('sm_90', 'predicated_tail')"]


def test_local_memory_instructions_are_counted_from_the_sass():
    assert len(_static.LOCAL_LOAD.findall("  /*0150*/  LDL.U16 R5, [R1+0x10] ;\n  /*0160*/  LDL.128 R8, [R1] ;\n")) == 2
    assert len(_static.LOCAL_STORE.findall("  /*0170*/  STL.128 [R1], R4 ;\n  /*0180*/  STG.E.128 [R2], R4 ;\n")) == 1
    assert not _static.LOCAL_LOAD.findall("  LDG.E.128 R4, desc[UR4][R2.64] ;\n  LDS R3, [R0] ;\n")


@pytest.mark.slow
def test_every_kernel_was_read(sm90):
    bases = {_base(n) for n in sm90}
    assert set(VECTORIZED) <= bases and {"pn_fwd_nchw_kernel", "mbstd_partial_kernel", "gp_partial_kernel"} <= bases
    assert len(sm90) >= 100 and all(k.registers > 0 for k in sm90.values())


@pytest.mark.slow
def test_no_kernel_calls_a_64_bit_division_routine(sm90):
    """Per-element index math is 32-bit or division-free (rows x columns grids); a 64-bit loop counter would also
    show here, as the compiler divides to count its trips."""
    assert not {n: k.int64_division for n, k in sm90.items() if k.int64_division}
    assert _static.INT64_DIVISION.search("CALL.REL.NOINC `(__internal_0_$__cuda_sm20_div_s64)")  # what it looks for


@pytest.mark.slow
def test_theoretical_occupancy_is_at_least_half(sm90):
    low = {n: f"{k.occupancy:.0%} ({k.registers} registers)" for n, k in sm90.items() if k.occupancy < OCCUPANCY_FLOOR}
    assert not low, low


def test_occupancy_model_matches_the_hardware_limits():
    """The model the floor is judged by: 32 registers -> 8 blocks of 256 (100 %), 64 -> 4 (50 %), 72 -> 3,
    and shared memory limits blocks too."""
    k = _static.Kernel("k", 32, 0, 0, 0, 0, [])
    assert k.occupancy == 1.0
    assert _static.Kernel("k", 64, 0, 0, 0, 0, []).occupancy == 0.5
    assert _static.Kernel("k", 72, 0, 0, 0, 0, []).occupancy == 0.375
    assert _static.Kernel("k", 32, 0, 100 * 1024, 0, 0, []).occupancy == 0.25
