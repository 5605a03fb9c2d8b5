# Sourced by scripts/test and scripts/demo: install whatever this machine lacks.
# Every step is skipped when its result is already there, so a second run is quick.

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION=0.18.1

log() { printf '\n== %s\n' "$*"; }

ensure_system_packages() {
    local missing=()
    for pkg in postgresql-15 postgresql-server-dev-15 postgresql-client-15 postgresql-15-cron libclang-dev clang sudo python3-venv; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

ensure_cargo_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        log "installing cargo-pgrx $PGRX_VERSION (a few minutes)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    if ! grep -qs "pg15" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
        log "pointing pgrx at PostgreSQL 15"
        cargo pgrx init --pg15 "$PG_CONFIG"
    fi
}

# Python test tools (pytest, psycopg, the official stripe library, localstripe) in .venv.
ensure_venv() {
    local stamp=.venv/.requirements.sha
    local want
    want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
    if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "installing Python test tools into .venv"
        python3 -m venv .venv
        .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
        echo "$want" > "$stamp"
    fi
}

install_extension() {
    log "building and installing pg_payment into PostgreSQL 15"
    cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
    # The released install scripts too, so that tests can install an old version with
    # today's library and update it (CREATE EXTENSION pg_payment VERSION '0.1.0').
    install -m 644 sql/released/pg_payment--*.sql "$("$PG_CONFIG" --sharedir)/extension/"
}

# Released versions, built once from their commit and kept outside the work tree, for the
# upgrade test: `RELEASED_BUILDS` names "version commit" pairs. Prints nothing; sets
# PG_PAYMENT_RELEASED_<version with underscores> to the build's folder (lib/, extension/).
RELEASED_BUILDS=("0.1.0 777f1ca")
RELEASED_CACHE=${PG_PAYMENT_CACHE:-$HOME/.cache/pg_payment}/released

ensure_released_builds() {
    local pair version commit dir work
    for pair in "${RELEASED_BUILDS[@]}"; do
        read -r version commit <<<"$pair"
        dir=$RELEASED_CACHE/$version-$commit
        if [ ! -f "$dir/lib/pg_payment.so" ]; then
            if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
                echo "release $version ($commit) is not in this clone's history: fetch it (git fetch --unshallow)" >&2
                return 1
            fi
            log "building released pg_payment $version from $commit (once; cached in $dir)"
            work=$(mktemp -d /tmp/pg_payment_release.XXXXXX)
            git archive "$commit" | tar -x -C "$work"
            # A debug build: what matters is the release's code and SQL, not its speed.
            (cd "$work" && CARGO_TARGET_DIR="$RELEASED_CACHE/target" \
                cargo pgrx package --debug --pg-config "$PG_CONFIG" --out-dir "$work/package" >/dev/null)
            rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/lib" "$dir.tmp/extension"
            cp "$work/package$("$PG_CONFIG" --pkglibdir)/pg_payment.so" "$dir.tmp/lib/"
            cp "$work/package$("$PG_CONFIG" --sharedir)/extension/pg_payment"* "$dir.tmp/extension/"
            rm -rf "$dir" && mv "$dir.tmp" "$dir"
            rm -rf "$work" "$RELEASED_CACHE/target"
        fi
        export "PG_PAYMENT_RELEASED_${version//./_}=$dir"
    done
}

# Released scripts never change: each is checked against the checksum committed when it
# was released (sql/released/SHA256SUMS, append-only) and against its first commit.
check_released_scripts() {
    log "released SQL scripts are unchanged"
    (cd sql && sha256sum --quiet -c released/SHA256SUMS)
    local file first
    while read -r _ file; do
        first=$(git log --diff-filter=A --format=%H -- "sql/$file" 2>/dev/null | tail -n 1)
        if [ -n "$first" ] && ! git diff --quiet "$first" -- "sql/$file"; then
            echo "sql/$file changed since it was released in $first; released scripts never change" >&2
            return 1
        fi
    done < sql/released/SHA256SUMS
}
