"""The extension's CUDA kernels, held to their design by their compiled sm_90 code (no GPU: nothing runs).

ops_cuda.cu is compiled here with the extension's flags and read back with ptxas' report and nvdisasm
(fastpggan._static): the streaming kernels move 16 bytes per global load and store, no kernel calls a 64-bit
integer division routine, spills, or falls under 50 % theoretical occupancy at its 256-thread blocks.
"""
import pytest

from fastpggan import _build, _static

pytestmark = [pytest.mark.slow,  # compiles ops_cuda.cu for sm_90
              pytest.mark.skipif(_build.find_cuda_home() is None or _static.tools_dir() is None,
                                 reason="no CUDA toolkit (nvcc) or no nvdisasm (Triton) on this machine")]

# The kernels that stream tensors: their instantiations with V = 16 bytes / element size must use 128-bit
# accesses (each also has a V = 1 form for misaligned or odd-sized tensors).
VECTORIZED = ("bias_act_kernel", "bias_act_grad_kernel", "fade_same_fwd_kernel", "fade_same_bwd_kernel",
              "fade_up_fwd_nchw_kernel", "fade_up_fwd_cl_kernel", "fade_up_bwd_nchw_kernel", "fade_up_bwd_cl_kernel",
              "gp_interpolate_kernel", "gp_grad_kernel", "pn_fwd_rows_kernel", "pn_bwd_rows_kernel",
              "mbstd_concat_nchw_kernel")
VECTOR = {"float": 4, "c10::BFloat16": 8, "c10::Half": 8, "double": 2}
OCCUPANCY_FLOOR = 0.5   # no exception is needed today


@pytest.fixture(scope="module")
def sm90(tmp_path_factory):
    return _static.kernels(*_static.compile_cubin("sm_90", str(tmp_path_factory.mktemp("cubin"))))


def _base(name):
    return name.split("<", 1)[0]


def _template(name):
    return [a.strip() for a in name.split("<", 1)[1].split(">(", 1)[0].split(",")]


def test_every_kernel_was_read(sm90):
    bases = {_base(n) for n in sm90}
    assert set(VECTORIZED) <= bases and {"pn_fwd_nchw_kernel", "mbstd_partial_kernel", "gp_partial_kernel"} <= bases
    assert len(sm90) >= 100 and all(k.registers > 0 for k in sm90.values())


def test_streaming_kernels_move_16_bytes_per_access(sm90):
    checked = 0
    for name, k in sm90.items():
        if _base(name) not in VECTORIZED:
            continue
        args = _template(name)
        dtype, v = args[0], int(args[2])
        # the vector form: V elements of 16 bytes; the NCHW upsampling backward takes V/2 low columns per thread
        vector = args[3] == "true" if _base(name) == "fade_up_bwd_nchw_kernel" else v == VECTOR[dtype]
        if vector:
            assert k.ld128 >= 1 and k.st128 >= 1, f"{name}: {k.ld128} 128-bit loads, {k.st128} 128-bit stores"
            checked += 1
        else:
            assert v == 1, name   # the scalar form, for misaligned or odd-sized tensors
    assert checked == (len(VECTORIZED) + 1) * len(VECTOR)   # bias_act twice: bias per row (NCHW) or per column


def test_no_kernel_calls_a_64_bit_division_routine(sm90):
    """Per-element index math is 32-bit or division-free (rows x columns grids); a 64-bit loop counter would also
    show here, as the compiler divides to count its trips."""
    assert not {n: k.int64_division for n, k in sm90.items() if k.int64_division}
    assert _static.INT64_DIVISION.search("CALL.REL.NOINC `(__internal_0_$__cuda_sm20_div_s64)")   # what it looks for


def test_no_kernel_spills(sm90):
    assert not {n: k.spill_bytes for n, k in sm90.items() if k.spill_bytes}


def test_theoretical_occupancy_is_at_least_half(sm90):
    low = {n: f"{k.occupancy:.0%} ({k.registers} registers)" for n, k in sm90.items()
           if k.occupancy < OCCUPANCY_FLOOR}
    assert not low, low


def test_occupancy_model_matches_the_hardware_limits():
    """The model the floor is judged by: 32 registers -> 8 blocks of 256 (100 %), 64 -> 4 (50 %), 72 -> 3,
    and shared memory limits blocks too."""
    k = _static.Kernel("k", 32, 0, 0, 0, 0, [])
    assert k.occupancy == 1.0
    assert _static.Kernel("k", 64, 0, 0, 0, 0, []).occupancy == 0.5
    assert _static.Kernel("k", 72, 0, 0, 0, 0, []).occupancy == 0.375
    assert _static.Kernel("k", 32, 0, 100 * 1024, 0, 0, []).occupancy == 0.25
