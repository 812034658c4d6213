#!/usr/bin/env bash
# Scaling over a real, slower network: 1 rank vs 2 ranks on the emulated two-node cluster
# (cluster/emulate/two-node.sh, 1 rank per node, 1 BLAS thread each), with the gradient allreduce
# overlapped with backward and without, and the communication each leaves exposed per step (from
# the timeline: distnn-bench anatomy). Needs root (network namespaces, tc). Run from a venv with
# distnn and the mpich wheel:
#
#   bash benchmarks/emulated_scaling.sh                  # cnn at 1gbit, mlp at 4gbit
#   bash benchmarks/emulated_scaling.sh cnn:1gbit mlp:1gbit mlp:4gbit
#
# Each case runs the three jobs back to back ROUNDS times (default 3) and prints the medians:
# samples/s of 1 rank, of 2 ranks with and without overlap, their ratios to 1 rank, and the exposed
# gradient communication per step (ms, rank 0's mean) with and without overlap.
set -euo pipefail
PYTHON="$(command -v "${PYTHON:-python3}")"
# Absolute before the cd (PYTHON may be relative), without resolving a venv's symlink.
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
cd "$(dirname "$0")"
EMU="$PWD/../cluster/emulate/two-node.sh"
ROUNDS="${ROUNDS:-3}"
[[ -x "$(dirname "$PYTHON")/mpiexec" ]] && export DISTNN_EMU_MPIEXEC="${DISTNN_EMU_MPIEXEC:-$(dirname "$PYTHON")/mpiexec}"
export DISTNN_EMU_NAME="${DISTNN_EMU_NAME:-distnn-scaling}"
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE  # benchmark runs only: the machine's own BLAS kernels
TMP="$(mktemp -d)"
trap 'bash "$EMU" down >/dev/null 2>&1 || true; rm -rf "$TMP"' EXIT

rate_of() { sed -n 's/.*samples\/s=\([0-9]*\).*/\1/p'; }
exposed_of() { awk '/exposed comm\./ {print $4}' "$1"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

two_ranks() {  # two_ranks MODEL OVERLAP TIMELINE: global samples/s of 2 ranks on the 2 nodes
    bash "$EMU" mpiexec flat -- -hosts n1,n2 -n 2 "$PYTHON" "$PWD/bench_scaling.py" --model "$1" \
        --overlap "$2" --timeline "$3" | rate_of
}

printf '%-5s %-6s %8s %9s %9s %6s %6s %11s %11s\n' model link "1 rank" "2 ov.on" "2 ov.off" "x on" "x off" \
    "exp.on(ms)" "exp.off(ms)"
for case in "${@:-cnn:1gbit mlp:4gbit}"; do
    for spec in $case; do
        model="${spec%%:*}" rate="${spec#*:}"
        bash "$EMU" up "$rate" >/dev/null
        : >"$TMP/one" ; : >"$TMP/on" ; : >"$TMP/off" ; : >"$TMP/exp_on" ; : >"$TMP/exp_off"
        for _ in $(seq "$ROUNDS"); do
            "$PYTHON" bench_scaling.py --model "$model" | rate_of >>"$TMP/one"
            two_ranks "$model" on "$TMP/on.json" >>"$TMP/on"
            two_ranks "$model" off "$TMP/off.json" >>"$TMP/off"
            "$PYTHON" -m distnn.bench anatomy "$TMP/on.json" >"$TMP/anatomy_on"
            "$PYTHON" -m distnn.bench anatomy "$TMP/off.json" >"$TMP/anatomy_off"
            exposed_of "$TMP/anatomy_on" >>"$TMP/exp_on"
            exposed_of "$TMP/anatomy_off" >>"$TMP/exp_off"
        done
        one=$(median <"$TMP/one") on=$(median <"$TMP/on") off=$(median <"$TMP/off")
        printf '%-5s %-6s %8.0f %9.0f %9.0f %5.2fx %5.2fx %11.2f %11.2f\n' "$model" "$rate" "$one" "$on" "$off" \
            "$(awk "BEGIN {print $on / $one}")" "$(awk "BEGIN {print $off / $one}")" \
            "$(median <"$TMP/exp_on")" "$(median <"$TMP/exp_off")"
    done
done
echo "# last anatomy with overlap ($model at $rate):"
cat "$TMP/anatomy_on"
