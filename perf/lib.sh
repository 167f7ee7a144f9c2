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
