#!/usr/bin/env bash
# Runs pier's fuzz targets with libFuzzer, each for a while (bounded, stops by itself): the
# HTTP/1.x codec's (h1_request, h1_response, chunked: balancer/h1/fuzz, built against pier-h1
# alone) and the balancer's (host, h2_frames: balancer/proxy/fuzz).
#
#   bash balancer/proxy/fuzz/run.sh                 # every target, 60 s each
#   SECONDS_EACH=600 bash balancer/proxy/fuzz/run.sh h1_request chunked
#
# Needs cargo-fuzz (installed here when missing). libFuzzer's instrumentation needs unstable
# compiler flags: on a stable toolchain RUSTC_BOOTSTRAP=1 allows them for this build only.
# Safe Rust cannot corrupt memory, so no sanitizer: the targets look for panics (including
# their own assertions), hangs and unbounded memory. Findings land in fuzz/artifacts/TARGET/;
# a crash input replays with `cargo fuzz run TARGET FILE` from the crate (balancer/h1/ or
# balancer/proxy/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(h1_request h1_response chunked host h2_frames)
secs="${SECONDS_EACH:-60}"
for t in "${targets[@]}"; do
  case "$t" in
    h1_request | h1_response | chunked) crate=balancer/h1 ;;
    *) crate=balancer/proxy ;;
  esac
  here="$root/$crate/fuzz"
  cd "$root/$crate"
  corpus="$here/corpus/$t"
  mkdir -p "$corpus"
  seeds=()
  [ -d "$here/seeds/$t" ] && seeds=("$here/seeds/$t")
  dict=()
  [ -f "$here/http.dict" ] && [ "$t" != host ] && [ "$t" != h2_frames ] && dict=(-dict="$here/http.dict")
  mkdir -p "$here/artifacts"
  log="$here/artifacts/$t.log"
  echo "== $t ($secs s; log: $log)"
  if ! cargo fuzz run --sanitizer none --release "$t" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 "${dict[@]}" \
    -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "!! $t failed; inputs that fail are in $here/artifacts/$t/" >&2
    exit 1
  fi
  grep -E "^#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb" "$log" || true
done
