#!/usr/bin/env bash
# `make test-asan`: builds csrc/cpu with AddressSanitizer + UndefinedBehaviorSanitizer into build/asan
# (vidsel/_C*.so is left alone) and runs the op tests against that build. Any sanitizer report fails.
#   PY=...          the interpreter (default: .venv/bin/python)
#   ASAN_TESTS=...  pytest -k expression (default: every op test except the Triton-interpreter cases,
#                   which never enter csrc/cpu); extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
OUT=$ROOT/build/asan
cd "$ROOT"
VIDSEL_SANITIZE=1 MAX_JOBS=${MAX_JOBS:-2} flock /tmp/vidsel-build.lock \
  "$PY" setup.py -q build_ext --build-lib "$OUT/lib" --build-temp "$OUT/temp"

# A shadow checkout: links to every top-level entry and to every file of vidsel/ except the compiled
# CPU extension; vidsel/_C.*.so links to the sanitized build (the CUDA one, never run here, stays).
TREE=$OUT/tree
rm -rf "$TREE" "$OUT/reports"
mkdir -p "$TREE/vidsel" "$OUT/reports"
for entry in "$ROOT"/*; do
  case $(basename "$entry") in vidsel | build) ;; *) ln -s "$entry" "$TREE/" ;; esac
done
for entry in "$ROOT"/vidsel/*; do
  case $(basename "$entry") in _C.*.so) ;; *) ln -s "$entry" "$TREE/vidsel/" ;; esac
done
ln -s "$OUT"/lib/vidsel/_C.*.so "$TREE/vidsel/"

# Python is not instrumented, so the ASan runtime must be loaded first; Python's own allocations
# look like leaks at exit, hence detect_leaks=0. Reports go to files and are counted below.
ldd "$OUT"/lib/vidsel/_C.*.so | grep -q libasan || { echo "test-asan: $OUT/lib is not instrumented" >&2; exit 1; }
# libstdc++ too: ASan intercepts __cxa_throw and must find the real one when it starts.
export LD_PRELOAD="$(${CXX:-c++} -print-file-name=libasan.so) $(${CXX:-c++} -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:log_path=$OUT/reports/asan
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$OUT/reports/ubsan
export TRITON_INTERPRET=1
cd "$TREE"
"$PY" -c 'import vidsel._backends as b; assert b._CPU_BUILT, b._CPU_REASON; print("test-asan: vidsel from", b.__file__)'
status=0
"$PY" -m pytest -q -p no:cacheprovider tests/ops -k "${ASAN_TESTS:-not triton}" "$@" || status=$?
reports=$(find "$OUT/reports" -type f | wc -l)
echo "test-asan: sanitizer reports: $reports (files in $OUT/reports)"
if [ "$reports" -ne 0 ]; then
  cat "$OUT"/reports/*
  exit 1
fi
exit $status
