#!/usr/bin/env bash
# Deployment check, for CI machines with no Docker engine and no cluster.
#
#   bash .ci/deploy-check.sh            # from anywhere in the repository
#   VEGA_SKIP_DEPLOY_CHECK=1 bash .ci/deploy-check.sh   # skip it locally
#
# (a) deploy/validate: renders the Helm chart with Helm's Go packages and
#     decodes every object strictly into the Kubernetes API types; parses the
#     Dockerfile with BuildKit's parser and compose.yaml with the Compose
#     loader, and asserts their properties.
# (b) builds the static binary with the Dockerfile's command and runs it the
#     way the image does: from an empty directory, as UID/GID 65532,
#     configured by environment only, with an unwritable log directory. It
#     must start, serve /healthz, answer `healthcheck`, log JSON to stdout
#     and exit 0 on SIGTERM. Then it starts it with the chart's rendered
#     config.yaml, and checks that a non-loopback admin listener without a
#     key is refused.
#
# Needs: Go, bash, curl, jq, setpriv (util-linux); as root, it installs the
# missing ones with apt-get. Binds loopback ports only, except one admin
# listener on all interfaces (as in a container), probed on 127.0.0.1.
set -euo pipefail

if [[ "${VEGA_SKIP_DEPLOY_CHECK:-}" == 1 ]]; then
	echo "deploy-check: skipped (VEGA_SKIP_DEPLOY_CHECK=1)"
	exit 0
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "  ok   $*"; }
fail() { failed=$((failed + 1)); echo "  FAIL $*"; }

# --- tools --------------------------------------------------------------------
need=()
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
command -v setpriv >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
	if [[ $(id -u) != 0 ]]; then
		echo "deploy-check: missing ${need[*]}; install them (apt-get install ${need[*]})" >&2
		exit 1
	fi
	echo "deploy-check: installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
	# Only the processes this script started, by PID.
	for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT

# --- (a) static validation ----------------------------------------------------
echo "deploy-check (a): go test in deploy/validate"
chart_config="$tmp/chart-config.yaml"
(cd deploy/validate && VEGA_CHART_CONFIG_OUT="$chart_config" go test -count=1 ./...)

# --- (b) the binary as the image runs it --------------------------------------
echo "deploy-check (b): the static binary, as UID 65532, configured by env only"

# Same flags as the Dockerfile's build stage (deploy/validate checks that
# they stay in step). No VCS stamp: the image's context has no .git.
version="deploy-check-$(date +%s)"
bindir="$tmp/bin"
mkdir -p "$bindir"
CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
	go build -trimpath -ldflags "-s -w -X main.version=${version}" -o "$bindir/vega-gateway" .
bin="$bindir/vega-gateway"

if buildinfo=$(go version -m "$bin" 2>/dev/null) && grep -q 'CGO_ENABLED=0' <<<"$buildinfo"; then
	pass "binary built with CGO_ENABLED=0"
else
	fail "binary not built with CGO_ENABLED=0"
fi

# The image runs as 65532 from /, which it cannot write. Mimic both: a
# root-owned empty directory, and the binary readable by everyone.
chmod 0755 "$tmp" "$bindir"
rundir="$tmp/run"
mkdir -m 0755 "$rundir"
if [[ $(id -u) == 0 ]]; then
	as_image=(setpriv --reuid=65532 --regid=65532 --clear-groups)
else
	echo "  note: not root, running as UID $(id -u) instead of 65532"
	as_image=()
fi

# A free loopback port, below the kernel's ephemeral range so that no
# outgoing connection of another process holds it: no socket in any state
# uses it (ss), and a connect to it is refused (bash's /dev/tcp).
read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range
free_port() {
	local p
	for _ in $(seq 1 100); do
		p=$((10000 + RANDOM % (ephemeral_low - 10000)))
		if command -v ss >/dev/null && [[ -n "$(ss -Htan "( sport = :$p )")" ]]; then
			continue
		fi
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	echo "deploy-check: no free port found" >&2
	return 1
}

# start NAME ARGS... starts the binary in $rundir with a clean environment
# (only PATH and the VEGA_* in the array "envs"), as the image user.
start() {
	local name=$1
	shift
	(cd "$rundir" && exec "${as_image[@]}" env -i PATH=/usr/bin:/bin "${envs[@]}" "$bin" "$@") \
		>"$tmp/$name.out" 2>"$tmp/$name.err" &
	started=$!
	pids+=("$started")
}

# wait_http URL: poll until something answers, for at most 10 s.
wait_http() {
	for _ in $(seq 1 100); do
		curl -s -o /dev/null --max-time 1 "$1" && return 0
		sleep 0.1
	done
	return 1
}

# stop PID NAME: SIGTERM, then wait at most 15 s for the exit status.
stop() {
	local pid=$1 name=$2 rc=0
	if ! kill -TERM "$pid" 2>/dev/null; then
		wait "$pid" || rc=$?
		fail "$name: had already exited (status $rc) before SIGTERM"
		return
	fi
	for _ in $(seq 1 150); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		fail "$name: still running 15 s after SIGTERM"
		return
	fi
	wait "$pid" || rc=$?
	if [[ $rc == 0 ]]; then pass "$name: exit 0 after SIGTERM"; else fail "$name: exit $rc after SIGTERM"; fi
}

status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }

data=$(free_port)
admin=$(free_port)
upstream=$(free_port) # nothing listens there: Ollama is down
logdir=/nonexistent-unwritable/logs

if [[ "$("$bin" version)" == *"$version"* ]]; then
	pass "version stamped: $version"
else
	fail "version: got '$("$bin" version)', want $version"
fi

envs=(
	VEGA_UPSTREAM_URL="http://127.0.0.1:$upstream"
	VEGA_GATEWAY_LISTEN="127.0.0.1:$data"
	VEGA_ADMIN_LISTEN="127.0.0.1:$admin"
	VEGA_LOG_DIR="$logdir"
	VEGA_GATEWAY_DRAIN_TIMEOUT=5s
)
start env serve
pid=$started
if wait_http "http://127.0.0.1:$data/healthz"; then
	pass "env-only: started, with Ollama unreachable and log dir $logdir"
else
	fail "env-only: /healthz did not answer within 10 s"
	sed 's/^/    stderr: /' "$tmp/env.err" | head -20
fi

if [[ $(id -u) == 0 ]]; then
	ids=$(awk '/^Uid:|^Gid:/ {printf "%s ", $2}' "/proc/$pid/status" 2>/dev/null || true)
	if [[ $ids == "65532 65532 " ]]; then pass "runs as UID/GID 65532"; else fail "runs as UID/GID '$ids', want 65532 65532"; fi
fi
headers=$(curl -s -D - -o /dev/null --max-time 5 "http://127.0.0.1:$data/healthz" || true)
if [[ $(head -1 <<<"$headers") == *" 200"* ]]; then pass "data /healthz: 200"; else fail "data /healthz: $(head -1 <<<"$headers")"; fi
if grep -qi '^x-correlation-id: [^[:space:]]' <<<"$headers"; then pass "data /healthz: X-Correlation-ID header"; else fail "data /healthz: no X-Correlation-ID header"; fi
code=$(status_of "http://127.0.0.1:$admin/healthz")
if [[ $code == 200 ]]; then pass "admin /healthz: 200"; else fail "admin /healthz: $code"; fi
code=$(status_of "http://127.0.0.1:$admin/readyz")
if [[ $code == 503 ]]; then pass "admin /readyz: 503 while Ollama is unreachable"; else fail "admin /readyz: $code, want 503"; fi

if "${as_image[@]}" "$bin" healthcheck --url "http://127.0.0.1:$data/healthz" 2>"$tmp/hc.err"; then
	pass "healthcheck subcommand: exit 0"
else
	fail "healthcheck subcommand: exit $? ($(cat "$tmp/hc.err"))"
fi
rc=0
"${as_image[@]}" "$bin" healthcheck --url "http://127.0.0.1:$upstream/healthz" 2>/dev/null || rc=$?
if [[ $rc == 1 ]]; then pass "healthcheck against a closed port: exit 1"; else fail "healthcheck against a closed port: exit $rc, want 1"; fi

stop "$pid" env

if [[ -s "$tmp/env.out" ]] && jq -se 'length > 0 and all(type == "object" and has("level"))' "$tmp/env.out" >/dev/null 2>&1; then
	pass "stdout: $(wc -l <"$tmp/env.out") JSON log lines"
else
	fail "stdout is not JSON log lines:"
	head -5 "$tmp/env.out" | sed 's/^/    /'
fi
if [[ $(grep -c "$logdir" "$tmp/env.err" || true) == 1 ]]; then
	pass "stderr: one warning about the unusable log dir"
else
	fail "stderr: want exactly one line naming $logdir:"
	sed 's/^/    /' "$tmp/env.err" | head -10
fi
if [[ -z "$(ls -A "$rundir")" && ! -e "$logdir" ]]; then
	pass "nothing written to the working or log directory"
else
	fail "files written: $(ls -A "$rundir") $(ls -d "$logdir" 2>/dev/null || true)"
fi

# The Helm chart's config.yaml (rendered by the tests above) is accepted,
# with the admin listener off loopback as in a pod: probes stay open and
# admin routes need the key. Listen addresses are overridden by env, as the
# chart's Deployment does, onto free ports.
if [[ -s "$chart_config" ]]; then
	key="deploy-check-admin-key-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
	cp "$chart_config" "$tmp/config.yaml"
	chmod 0644 "$tmp/config.yaml"
	data=$(free_port)
	admin=$(free_port)
	envs=(
		VEGA_UPSTREAM_URL="http://127.0.0.1:$upstream"
		VEGA_GATEWAY_LISTEN="127.0.0.1:$data"
		VEGA_ADMIN_LISTEN=":$admin"
		VEGA_LOG_DIR=
		VEGA_AUTH_ADMIN_API_KEYS="$key"
	)
	start chart serve --config "$tmp/config.yaml"
	pid=$started
	if wait_http "http://127.0.0.1:$admin/healthz"; then
		pass "chart config.yaml: started"
		for p in healthz readyz; do
			code=$(status_of "http://127.0.0.1:$admin/$p")
			if [[ $code == 200 || $code == 503 ]]; then pass "chart: admin /$p open without a key ($code)"; else fail "chart: admin /$p without a key: $code"; fi
		done
		code=$(status_of "http://127.0.0.1:$admin/admin/resources/pools")
		if [[ $code == 401 ]]; then pass "chart: admin route without a key: 401"; else fail "chart: admin route without a key: $code, want 401"; fi
		code=$(status_of -H "Authorization: Bearer $key" "http://127.0.0.1:$admin/admin/resources/pools")
		if [[ $code == 200 ]]; then pass "chart: admin route with the key: 200"; else fail "chart: admin route with the key: $code, want 200"; fi
	else
		fail "chart config.yaml: did not start:"
		sed 's/^/    stderr: /' "$tmp/chart.err" | head -10
	fi
	stop "$pid" chart
	if cat "$tmp/chart.out" "$tmp/chart.err" | grep -qF "$key"; then fail "chart: the admin key appears in the output"; else pass "chart: the admin key is not in the output"; fi
else
	fail "no rendered chart config.yaml from deploy/validate"
fi

# F-40: an admin listener off loopback with no key must not start.
admin=$(free_port)
envs=(
	VEGA_UPSTREAM_URL="http://127.0.0.1:$upstream"
	VEGA_GATEWAY_LISTEN="127.0.0.1:$(free_port)"
	VEGA_ADMIN_LISTEN=":$admin"
	VEGA_LOG_DIR=
)
start nokey serve
pid=$started
for _ in $(seq 1 50); do
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
	fail "admin on all interfaces without a key: still running after 5 s"
	kill -TERM "$pid" 2>/dev/null || true
else
	rc=0
	wait "$pid" || rc=$?
	if [[ $rc != 0 ]] && grep -q 'admin' "$tmp/nokey.err"; then
		pass "admin on all interfaces without a key: refused (exit $rc: $(head -1 "$tmp/nokey.err"))"
	else
		fail "admin on all interfaces without a key: exit $rc, stderr: $(head -1 "$tmp/nokey.err")"
	fi
fi

echo "deploy-check: $passed passed, $failed failed"
((failed == 0))
