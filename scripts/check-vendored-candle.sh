#!/usr/bin/env bash
# Checks that third_party/candle-core is exactly the crates.io release of candle-core
# 0.11.1, less the paths in EXCLUDED, plus third_party/candle-core.patch: fetches the
# published .crate through cargo, checks its sha256 against the pinned one, applies the
# patch and compares the result with the vendored tree file by file. Exits 1 naming the
# files that differ. See third_party/README.md.
#
#   scripts/check-vendored-candle.sh                check (needs crates.io, or the .crate
#                                                   already in cargo's registry cache)
#   scripts/check-vendored-candle.sh --write-patch  after editing the vendored tree on
#                                                   purpose: rewrite the patch from it, then check
set -euo pipefail
export LC_ALL=C

VERSION=0.11.1
# sha256 of candle-core-0.11.1.crate; the same value is crates.io's index checksum (the
# `checksum` line in Cargo.lock), which is checked too.
SHA256=d11c8be87cfbaef9ebb62fb3f850d1fc8e00cc1d11d393fdbe55a4d5c2cdb325
# In the published crate, not in the vendored copy: benches, examples and tests (their targets
# and dev-dependencies are removed from Cargo.toml by the patch), and cargo's packaging files.
EXCLUDED=(benches examples tests .cargo_vcs_info.json Cargo.toml.orig Cargo.lock)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vendored=$root/third_party/candle-core
patchfile=$root/third_party/candle-core.patch

write_patch=false
case "${1:-}" in
    "") ;;
    --write-patch) write_patch=true ;;
    *) echo "usage: $0 [--write-patch]" >&2; exit 2 ;;
esac

fail() { echo "check-vendored-candle: $*" >&2; exit 1; }

sha256() {
    if command -v sha256sum >/dev/null; then sha256sum "$1"; else shasum -a 256 "$1"; fi | cut -d' ' -f1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. The pristine .crate, through cargo: a throwaway project that depends on exactly this
#    version. CARGO_HOME is left as it is, so an already cached .crate is not downloaded again.
mkdir -p "$tmp/fetch/src"
cat >"$tmp/fetch/Cargo.toml" <<EOF
[package]
name = "check-vendored-candle"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
candle-core = { version = "=$VERSION", default-features = false }
EOF
: >"$tmp/fetch/src/lib.rs"
host=$(rustc -vV | sed -n 's/^host: //p')
(cd "$tmp/fetch" && cargo fetch --quiet --target "$host") ||
    fail "cargo fetch of candle-core $VERSION failed"

lock_sum=$(grep -A3 '^name = "candle-core"$' "$tmp/fetch/Cargo.lock" | sed -n 's/^checksum = "\(.*\)"$/\1/p')
[ "$lock_sum" = "$SHA256" ] ||
    fail "crates.io checksum of candle-core $VERSION is '$lock_sum', pinned $SHA256"

crate=
found=()
for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"candle-core-$VERSION.crate"; do
    [ -f "$f" ] || continue
    sum=$(sha256 "$f")
    found+=("$f: $sum")
    if [ "$sum" = "$SHA256" ]; then crate=$f; break; fi
done
[ -n "$crate" ] || fail "no candle-core-$VERSION.crate with sha256 $SHA256 in cargo's registry cache (found: ${found[*]:-none})"

# 2. Pristine tree, less what the vendored copy leaves out.
tar -xzf "$crate" -C "$tmp"
pristine=$tmp/candle-core-$VERSION
[ -d "$pristine" ] || fail "$crate does not unpack to candle-core-$VERSION/"
for p in "${EXCLUDED[@]}"; do rm -rf "${pristine:?}/$p"; done

if $write_patch; then
    mkdir "$tmp/gen"
    cp -R "$pristine" "$tmp/gen/a"
    cp -R "$vendored" "$tmp/gen/b"
    # diff exits 1 when the trees differ, which is the point; timestamps are dropped so the
    # patch only changes when the code does.
    (cd "$tmp/gen" && { diff -ruN a b || [ $? -eq 1 ]; }) |
        sed -E 's/^((---|\+\+\+) [^\t]+)\t.*$/\1/' >"$tmp/candle-core.patch"
    mv "$tmp/candle-core.patch" "$patchfile"
    echo "wrote ${patchfile#"$root"/}: $(grep -c '^diff ' "$patchfile") files"
fi

# 3. Apply the patch: exactly, no fuzz.
[ -f "$patchfile" ] || fail "${patchfile#"$root"/} is missing"
(cd "$pristine" && patch -p1 --batch --forward --fuzz=0 --no-backup-if-mismatch --quiet <"$patchfile") ||
    fail "${patchfile#"$root"/} does not apply cleanly to pristine candle-core $VERSION"

# 4. Compare. Every vendored file must come from upstream + patch; the vendored copy has no
#    files of its own (its README.md and LICENSE are upstream's).
if ! report=$(diff -rq "$pristine" "$vendored"); then
    {
        echo "check-vendored-candle: third_party/candle-core differs from candle-core $VERSION + third_party/candle-core.patch:"
        # "Files P and V differ" / "Only in DIR: NAME", with the temp dir and repo root cut off.
        sed -e "s|$pristine|upstream+patch|g" -e "s|$vendored|third_party/candle-core|g" <<<"$report" |
            sed 's/^/  /'
        echo "first lines of the difference (upstream+patch -> vendored):"
        { diff -ruN "$pristine" "$vendored" || true; } |
            sed -E -e 's/^((---|\+\+\+) [^\t]+)\t.*$/\1/' \
                -e "s|$pristine|upstream+patch|g" -e "s|$vendored|third_party/candle-core|g" |
            head -n 60 || true
        echo "If the vendored change is intended, run: scripts/check-vendored-candle.sh --write-patch"
    } >&2
    exit 1
fi
echo "ok: third_party/candle-core == candle-core $VERSION (sha256 $SHA256) + third_party/candle-core.patch ($(grep -c '^diff ' "$patchfile") files)"
