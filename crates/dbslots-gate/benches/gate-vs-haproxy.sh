#!/bin/sh
# Side-by-side: direct, `dbslots gate` and HAProxy (TCP mode, maxconn) in
# front of one MySQL/MariaDB server, in one run, interleaved in rounds so a
# busy machine hurts all three alike. Prints one line per measurement.
#
#   crates/dbslots-gate/benches/gate-vs-haproxy.sh DBSLOTS_BINARY MYSQL_PORT [ROUNDS]
#
# Needs sysbench, haproxy and php-cli with pdo_mysql; uses the test account
# dbslots/dbslots-test-pw on database dbslots_test (`cargo xtask db up`).
set -eu
BIN=$1 PORT=$2 ROUNDS=${3:-2}
DIR=$(mktemp -d)
trap 'kill $GATE_PID $HAPROXY_PID 2>/dev/null; rm -rf "$DIR"' EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
GPORT=$(free_port) HPORT=$(free_port)
"$BIN" gate --listen 127.0.0.1:$GPORT --upstream 127.0.0.1:$PORT --pool "$DIR/pool" --capacity 20 2>"$DIR/gate.log" &
GATE_PID=$!
cat >"$DIR/haproxy.cfg" <<CFG
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 10s
    timeout client 1h
    timeout server 1h
    timeout queue 30s
listen mysql
    bind 127.0.0.1:$HPORT
    server db 127.0.0.1:$PORT maxconn 20
CFG
haproxy -f "$DIR/haproxy.cfg" -db >"$DIR/haproxy.log" 2>&1 &
HAPROXY_PID=$!
sleep 1
SB="sysbench oltp_point_select --mysql-host=127.0.0.1 --mysql-user=dbslots --mysql-password=dbslots-test-pw --mysql-db=dbslots_test --tables=1 --table-size=10000"
$SB --mysql-port=$PORT prepare >/dev/null 2>&1 || true
cat >"$DIR/connect.php" <<'PHP'
<?php
$n = (int)$argv[2]; $t = microtime(true);
for ($i = 0; $i < $n; $i++) {
    $pdo = new PDO("mysql:host=127.0.0.1;port={$argv[1]};dbname=dbslots_test", 'dbslots', 'dbslots-test-pw');
    $pdo->query('SELECT 1')->fetchColumn();
    $pdo = null;
}
printf("%.1f\n", (microtime(true) - $t) / $n * 1e6);
PHP
for round in $(seq 1 "$ROUNDS"); do
    for target in direct:$PORT gate:$GPORT haproxy:$HPORT; do
        name=${target%%:*} p=${target#*:}
        qps=$($SB --mysql-port=$p --threads=8 --time=5 run | sed -n 's/.*queries: *[0-9]* *(\([0-9.]*\) per sec.*/\1/p')
        us=$(php "$DIR/connect.php" $p 300)
        echo "round $round $name point_select_qps $qps connect_select1_close_us $us"
    done
done
