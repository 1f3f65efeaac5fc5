# Sourced by the bench scripts: ports, the processes a script starts (stopped on exit), a broker of its own.
# Needs $py (a Python) and $out (a log directory).
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened"; return 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# A Tansu broker of the script's own (memory engine), so nothing else competes for it: sets BROKER and broker_pid.
start_broker() {
  local port; port=$(free_port)
  BROKER=127.0.0.1:$port
  "${TANSU_BIN:-${MILLRACE_TANSU_BIN:-$HOME/.millrace/tools/tansu-0.6.0/bin/tansu}}" broker --listener-url "tcp://$BROKER" \
    --advertised-listener-url "tcp://$BROKER" --storage-engine memory://tansu/ >"$out/tansu.log" 2>&1 &
  broker_pid=$!
  pids+=("$broker_pid")
  wait_port "$port"
}

# A CA (ca.pem) and a certificate for 127.0.0.1 it signed (tls.pem, tls.key) in $1: rustls takes no self-signed
# CA certificate as a server's own.
make_certs() {
  local d=$1
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=millrace-bench-ca -keyout "$d/ca.key" -out "$d/ca.pem" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$d/tls.key" -out "$d/tls.csr" >/dev/null 2>&1
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$d/tls.ext"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 1 -extfile "$d/tls.ext" \
    -out "$d/tls.pem" >/dev/null 2>&1
}
