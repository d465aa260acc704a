# shellcheck shell=bash
# Shared by run.sh and test.sh: what building Berth needs on a fresh Debian 12 (as root).
# Sourced, not run.

# Installs Debian packages that are missing, in one apt transaction.
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
}

# The Rust toolchain rust-toolchain.toml pins. rustup never downloads here: when the pinned
# version is the installed stable one under another name, link it.
ensure_toolchain() {
  local pinned
  pinned=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$BERTH_TOP/rust-toolchain.toml")
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v rustup >/dev/null 2>&1 || { echo "rustup is required (https://rustup.rs)" >&2; return 1; }
  if ! rustup toolchain list | grep -q "^$pinned"; then
    local stable
    stable=$(rustup run stable rustc --version 2>/dev/null | awk '{print $2}')
    if [ "$stable" = "$pinned" ]; then
      rustup toolchain link "$pinned" "$(rustup run stable rustc --print sysroot)"
    else
      rustup toolchain install "$pinned" --profile minimal --component rustfmt,clippy
    fi
  fi
}

# Build dependencies: protoc for the CRI protobufs, a C toolchain for -sys crates.
install_build_deps() {
  apt_install protobuf-compiler build-essential pkg-config ca-certificates
  ensure_toolchain
}
