# shellcheck shell=bash
# Docker engine and test images for scripts/test and scripts/try.
# Sourced; uses BUSYBOX_IMAGE, ETCD_IMAGE, DOCKERD_LOG from scripts/test or scripts/try.

docker_server_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# The machine ships at most the docker client; the engine is started here, as
# root, with conservative flags: vfs works on any filesystem, and with no
# bridge and no iptables rules the tests' containers use host networking and
# stay on loopback.
ensure_dockerd() {
    if docker_server_up; then
        log "dockerd already running"
        return
    fi
    log "starting dockerd (log: $DOCKERD_LOG)"
    setsid dockerd --storage-driver=vfs --iptables=false --bridge=none \
        >"$DOCKERD_LOG" 2>&1 </dev/null &
    if ! wait_until 60 "dockerd to answer 'docker version'" docker_server_up; then
        show_log_tail "$DOCKERD_LOG"
        die "dockerd did not become ready"
    fi
}

image_present() { docker image inspect "$1" >/dev/null 2>&1; }

# There is no registry to pull from: images are imported from root filesystems
# assembled from Debian's own binaries.
ensure_busybox_image() {
    if image_present "$BUSYBOX_IMAGE"; then
        return
    fi
    log "importing $BUSYBOX_IMAGE from busybox-static"
    local rootfs
    rootfs=$(mktemp -d)
    mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
    chmod 1777 "$rootfs/tmp"
    cp /usr/bin/busybox "$rootfs/bin/busybox"
    local applet
    for applet in $(/usr/bin/busybox --list); do
        [[ $applet == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
    done
    # httpd and friends look users up; give them root and nobody.
    printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -c . | docker import - "$BUSYBOX_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

# etcd and etcdctl from Debian, with exactly the shared libraries ldd reports.
ensure_etcd_image() {
    if image_present "$ETCD_IMAGE"; then
        return
    fi
    local version
    version=$(/usr/bin/etcd --version | awk '/^etcd Version:/ { print $3 }')
    [[ $ETCD_IMAGE == *":$version" ]] ||
        die "installed etcd is $version but ETCD_IMAGE is $ETCD_IMAGE; update the constant"
    log "importing $ETCD_IMAGE from /usr/bin/etcd"
    local rootfs bin lib
    rootfs=$(mktemp -d)
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/tmp" "$rootfs/var/lib/etcd"
    chmod 1777 "$rootfs/tmp"
    for bin in /usr/bin/etcd /usr/bin/etcdctl; do
        cp "$bin" "$rootfs/usr/local/bin/"
        # One binary per ldd call: with several, ldd prints a "path:" header each.
        for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L "$lib" "$rootfs$lib"
        done
    done
    tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -c . |
        docker import -c 'ENV PATH=/usr/local/bin' - "$ETCD_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

# Test containers carry the labels drover-test=1 and drover-test.pid=<pid of
# the test process>; their guards remove them on drop, but a test killed by a
# timeout never drops. Remove only those whose test process is gone, so a
# concurrent test run keeps its containers.
sweep_stale_containers() {
    local id pid
    docker ps -a --filter label=drover-test=1 --format '{{.ID}} {{.Label "drover-test.pid"}}' |
        while read -r id pid; do
            if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
                log "removing stale test container $id (test process $pid is gone)"
                docker rm -f "$id" >/dev/null
            fi
        done
}
