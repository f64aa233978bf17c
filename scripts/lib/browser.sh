# shellcheck shell=bash
# What the dashboard's browser tests need beside Debian's chromium and
# chromium-driver: axe-core, the accessibility checker, from the npm registry.
# Sourced; uses CACHE and the AXE_* constants from scripts/test.
#
# The tarball is pinned by version and by the registry's sha512 integrity, and
# unpacked once into $CACHE/axe-core-$AXE_VERSION; the tests read axe.min.js
# from the path in DROVER_TEST_AXE.

ensure_axe_core() {
    local dir=$CACHE/axe-core-$AXE_VERSION
    export DROVER_TEST_AXE=$dir/axe.min.js
    if [[ -s $DROVER_TEST_AXE ]]; then
        return
    fi
    mkdir -p "$dir"
    local tarball
    tarball=$(mktemp -t axe-core.XXXXXX)
    curl --fail --silent --show-error --location --max-time 120 \
        "https://registry.npmjs.org/axe-core/-/axe-core-$AXE_VERSION.tgz" -o "$tarball"
    local want got
    want=$(printf '%s' "$AXE_SHA512" | base64 -d | od -An -tx1 | tr -d ' \n')
    got=$(sha512sum "$tarball" | cut -d' ' -f1)
    if [[ $got != "$want" ]]; then
        rm -f "$tarball"
        die "axe-core $AXE_VERSION: the tarball's sha512 is $got, not $want"
    fi
    tar -xzf "$tarball" -C "$dir" --strip-components=1 package/axe.min.js
    rm -f "$tarball"
}
