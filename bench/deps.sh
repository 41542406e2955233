#!/usr/bin/env bash
# deps.sh: what the dependency cache saves. For each round, a project whose
# requirements.txt names a new local wheel (so a new cache key) is run with
# `ci submit test` three ways: first run (installs), repeat run (cached: no
# install container), and the same tests with no requirements.txt at all
# (no install phase), interleaved; medians at the end.
#
#   bench/deps.sh [ROUNDS]     (default 5; needs a Docker engine and the
#                               ci-python:latest image)
# It builds the binaries, starts its own ci-server (--install-network none:
# everything is local) on a free port with a temporary data dir, and stops
# it and removes the cache volumes it made at the end (and no others).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
image=${CI_TEST_IMAGE:-ci-python:latest}

go build -o bin/ ./cmd/ci ./cmd/ci-server
go build -o bin/mkwheel ./bench/mkwheel
data=$(mktemp -d) work=$(mktemp -d)
docker volume ls -q --filter label=ci.deps | sort >"$work/volumes-before"
port=$((20000 + RANDOM % 20000))
./bin/ci-server --addr 127.0.0.1:$port --data "$data" --image "$image" --install-network none --log-level warn &
pid=$!
cleanup() {
	kill $pid 2>/dev/null || true
	wait $pid 2>/dev/null || true
	docker volume ls -q --filter label=ci.deps | sort | comm -13 "$work/volumes-before" - |
		xargs -r docker volume rm >/dev/null || true
	rm -rf "$data" "$work"
}
trap cleanup EXIT
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.1; done

now() { date +%s.%N; }
submit() { (cd "$1" && "$OLDPWD/bin/ci" submit test --server http://127.0.0.1:$port >/dev/null 2>&1); }
first=() repeat=() plain=()
for i in $(seq 0 "$rounds"); do
	p=$work/deps$i q=$work/plain$i
	mkdir -p "$p/wheels" "$q"
	whl=$(./bin/mkwheel "$p/wheels" "benchdep-$RANDOM$RANDOM" 1.0)
	mod=${whl%%-*}
	echo "./wheels/$whl" >"$p/requirements.txt"
	printf 'import %s\n\ndef test_a():\n    assert %s.VERSION == "1.0"\n\ndef test_b():\n    pass\n' "$mod" "$mod" >"$p/test_deps.py"
	printf 'def test_a():\n    pass\n\ndef test_b():\n    pass\n' >"$q/test_plain.py"
	t0=$(now); submit "$p"; t1=$(now); submit "$p"; t2=$(now); submit "$q"; t3=$(now)
	[ "$i" = 0 ] && continue # warm-up round, not counted
	f=$(echo "$t1 - $t0" | bc -l) r=$(echo "$t2 - $t1" | bc -l) n=$(echo "$t3 - $t2" | bc -l)
	first+=("$f") repeat+=("$r") plain+=("$n")
	printf 'round %d: first run %.3fs  repeat %.3fs  no requirements %.3fs\n' "$i" "$f" "$r" "$n"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
f=$(median "${first[@]}") r=$(median "${repeat[@]}") n=$(median "${plain[@]}")
printf 'median (%d rounds): first run %.3fs  repeat %.3fs  no requirements %.3fs\n' "$rounds" "$f" "$r" "$n"
printf 'repeat / first %.2f   repeat - no requirements %+.0f ms\n' "$(echo "$r / $f" | bc -l)" "$(echo "($r - $n) * 1000" | bc -l)"
