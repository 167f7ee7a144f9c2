# Shared by the perf scripts (sourced).

# build_at COMMIT: builds that commit's release binary in a worktree (/tmp/sluice-baseline,
# kept for the next run) and prints its path.
build_at() {
    local wt=/tmp/sluice-baseline
    git worktree remove --force "$wt" 2>/dev/null || true
    git worktree prune
    git worktree add -q --detach "$wt" "$1"
    (cd "$wt" && cargo build --release --locked -q)
    echo "$wt/target/release/sluice"
}

busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
# json FILE KEY: the first number under KEY.
json() { grep -o "\"$2\":[0-9.]*" "$1" | head -1 | cut -d: -f2; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# postfix_prepare EXTRA: a fresh Postfix instance in $PF_DIR (stopped first if running) with
# a durable queue, to listen on 127.0.0.1:$RELAY_PORT; EXTRA (main.cf lines) adds to the
# settings every benchmark shares. postfix_launch starts it.
postfix_prepare() {
    postfix -c "$PF_DIR/etc" stop >/dev/null 2>&1 || true
    rm -rf "$PF_DIR" && mkdir -p "$PF_DIR"/{etc,queue,data}
    cat >"$PF_DIR/etc/main.cf" <<MAIN
compatibility_level = 3.6
queue_directory = $PF_DIR/queue
data_directory = $PF_DIR/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = perf.postfix
mydestination =
mynetworks = 127.0.0.0/8
message_size_limit = 209715200
alias_maps =
alias_database =
maillog_file_prefixes = $PF_DIR
maillog_file = $PF_DIR/maillog
smtputf8_enable = no
$1
MAIN
    cp /etc/postfix/master.cf "$PF_DIR/etc/master.cf"
    chown postfix "$PF_DIR/data"
    postconf -c "$PF_DIR/etc" -F '*/*/chroot = n'
    postconf -c "$PF_DIR/etc" -M# smtp/inet
    postconf -c "$PF_DIR/etc" -Me "127.0.0.1:$RELAY_PORT/inet = 127.0.0.1:$RELAY_PORT inet n - n - - smtpd"
}
postfix_launch() {
    postfix -c "$PF_DIR/etc" start >/dev/null
    wait_port "$RELAY_PORT"
}

# For a report's heading: this machine, and the commit measured (+dirty with local changes).
machine_line() { echo "$(nproc) CPUs, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r)"; }
commit_id() { echo "$(git rev-parse --short HEAD)$(git diff --quiet || echo "+dirty")"; }

# finish_report: the report ($report) to the terminal and appended to perf/RESULTS.md.
finish_report() {
    echo >>"$report"
    cat "$report"
    { echo; cat "$report"; } >>perf/RESULTS.md
}
