# Sourced by scripts/test and scripts/demo: install whatever this machine lacks.
# Every step is skipped when its result is already there, so a second run is quick.

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION=0.18.1

log() { printf '\n== %s\n' "$*"; }

ensure_system_packages() {
    local missing=()
    for pkg in postgresql-15 postgresql-server-dev-15 postgresql-client-15 libclang-dev clang sudo python3-venv; do
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
}
