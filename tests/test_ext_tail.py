"""The CUDA kernels' tail (csrc/tail.h) on the CPU: no GPU here runs the CUDA flat kernels, so their partial last
vector is checked by compiling the same header for the host. For every dtype the kernels are built for (float,
double, c10::Half, c10::BFloat16) and every count 0..V, load_tail reads exactly p[0..count) and zero-fills the
other lanes, and store_tail writes exactly p[0..count), leaving every element after it as it was.
"""

import os
import shutil
import subprocess

import pytest
import torch.utils.cpp_extension as cpp

from fastpggan import _build

PROGRAM = r"""
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cstdio>
#include "tail.h"

using fastpggan::load_tail;
using fastpggan::store_tail;

static int checks = 0, failures = 0;

static void expect(bool ok, const char* what, const char* type, int count, int k) {
  ++checks;
  if (!ok) {
    ++failures;
    std::printf("FAIL %s %s count=%d lane=%d\n", what, type, count, k);
  }
}

template <typename T>
static void check(const char* type) {
  constexpr int V = 16 / int(sizeof(T));
  constexpr int kPad = 3;                      // elements after the vector: must never be read or written
  for (int count = 0; count <= V; ++count) {
    T src[V + kPad], dst[V + kPad], out[V];
    for (int k = 0; k < V + kPad; ++k) {
      src[k] = T(float(k + 1));                 // 1, 2, 3, ... exact in every dtype
      dst[k] = T(-7.0f);                        // the sentinel store_tail must leave past count
    }
    for (int k = 0; k < V; ++k) out[k] = T(99.0f);
    for (int k = count; k < V + kPad; ++k) src[k] = T(-5.0f);   // lanes load_tail must not keep
    load_tail<T, V>(src, count, out);
    for (int k = 0; k < V; ++k)
      expect(float(out[k]) == (k < count ? float(k + 1) : 0.0f), "load_tail", type, count, k);
    store_tail<T, V>(dst, count, out);
    for (int k = 0; k < V + kPad; ++k)
      expect(float(dst[k]) == (k < count ? float(k + 1) : -7.0f), "store_tail", type, count, k);
  }
}

int main() {
  check<float>("float");
  check<double>("double");
  check<c10::Half>("Half");
  check<c10::BFloat16>("BFloat16");
  std::printf("checks %d failures %d\n", checks, failures);
  return failures != 0;
}
"""

# every (dtype, count, lane) above: V = 4, 2, 8, 8 lanes; counts 0..V; a load check per lane and a store check
# per lane and padding element
EXPECTED = sum((v + 1) * (v + v + 3) for v in (4, 2, 8, 8))


@pytest.mark.skipif(shutil.which("c++") is None, reason="no host C++ compiler")
def test_tail_reads_and_writes_exactly_count_elements_for_every_dtype(tmp_path):
    src = tmp_path / "tail_test.cpp"
    src.write_text(PROGRAM)
    exe = tmp_path / "tail_test"
    includes = [f"-I{d}" for d in [_build.csrc_dir(), *cpp.include_paths()]]
    build = subprocess.run(
        ["c++", "-std=c++17", "-O2", "-Wall", "-Werror", "-Wno-unknown-pragmas", *includes, str(src), "-o", str(exe)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-3000:]
    assert run.stdout.strip().splitlines()[-1] == f"checks {EXPECTED} failures 0"


def test_the_cuda_kernels_use_the_tested_tail():
    """ops_cuda.cu moves its partial vectors only through tail.h: no loop bounded by a runtime count is left."""
    with open(os.path.join(_build.csrc_dir(), "ops_cuda.cu")) as fh:
        source = fh.read()
    assert '#include "tail.h"' in source
    assert "load_tail<" in source and "store_tail<" in source
    assert "k < count;" not in source
