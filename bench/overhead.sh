#!/usr/bin/env bash
# overhead.sh: wall time of `ci submit test` on a small passing project
# against `docker run --rm --network none` of the same image running pytest
# on the same files directly, interleaved, with the median ratio.
#
#   bench/overhead.sh [PAIRS]     (default 7; needs a Docker engine and
#                                  the ci-python:latest image)
# It builds the binaries, starts its own ci-server on a free port with a
# temporary data dir, and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-7}
image=${CI_TEST_IMAGE:-ci-python:latest}
project=$PWD/e2e/testdata/passing

go build -o bin/ ./cmd/ci ./cmd/ci-server
data=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
./bin/ci-server --addr 127.0.0.1:$port --data "$data" --image "$image" --log-level warn &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.1; done

now() { date +%s.%N; }
ci_times=() docker_times=() ratios=()
# One warm-up of each, not counted.
(cd "$project" && ../../../bin/ci submit test --server http://127.0.0.1:$port >/dev/null 2>&1)
docker run --rm --network none -v "$project:/workspace:ro" -w /workspace "$image" \
	python -m pytest -p no:cacheprovider >/dev/null
for i in $(seq 1 "$pairs"); do
	t0=$(now)
	(cd "$project" && ../../../bin/ci submit test --server http://127.0.0.1:$port >/dev/null 2>&1)
	t1=$(now)
	docker run --rm --network none -e PYTHONDONTWRITEBYTECODE=1 -v "$project:/workspace:ro" -w /workspace "$image" \
		python -m pytest -p no:cacheprovider >/dev/null
	t2=$(now)
	c=$(echo "$t1 - $t0" | bc -l) d=$(echo "$t2 - $t1" | bc -l)
	ci_times+=("$c") docker_times+=("$d") ratios+=("$(echo "$c / $d" | bc -l)")
	printf 'pair %d: ci %.3fs  docker run %.3fs  ratio %.2f\n' "$i" "$c" "$d" "$(echo "$c / $d" | bc -l)"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf 'median: ci %.3fs  docker run %.3fs  ratio %.2f (%d pairs)\n' \
	"$(median "${ci_times[@]}")" "$(median "${docker_times[@]}")" "$(median "${ratios[@]}")" "$pairs"
