#!/usr/bin/env python3
"""Assembles a container image from a release binary, without a Docker engine.

The image is "distroless" in the sense of gcr.io/distroless/cc: no shell and no
package manager, only what the binary needs to run:

  layer 1 (base)  the shared libraries the binary links (from `ldd`, copied from
                  this machine), CA certificates, /etc/passwd and /etc/group with
                  the nonroot user 65532, /etc/nsswitch.conf, an empty /tmp;
  layer 2 (app)   the stripped binary in /usr/local/bin.

Every tar entry has owner 0:0 (but the nonroot user's empty home), a fixed mtime (SOURCE_DATE_EPOCH) and sorted order, and
gzip runs with mtime 0, so the same inputs give the same digests.

Output, for `--out DIR`:
  DIR/<name>.oci/      an OCI image layout (pushable: `crane push DIR/x.oci REF`,
                       `skopeo copy oci:DIR/x.oci docker://REF`);
  DIR/<name>.tar       the same layout as a tar, with a Docker `manifest.json`
                       beside it, so `ctr images import`, `docker load` and
                       `podman load` all take it and name the image REF.

Usage: oci-image.py --binary PATH --ref REPO:TAG --out DIR --name NAME
                    [--label k=v ...] [--port 8080] [--ld-library-dir DIR]
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

NONROOT = 65532
CA_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]


class Layer:
    """A tar layer built in memory, entries added in sorted path order."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}  # path -> (TarInfo, bytes or None)

    def _info(self, path, kind, mode, uid=0, gid=0):
        info = tarfile.TarInfo(path)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        return info

    def dir(self, path, mode=0o755, uid=0, gid=0):
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in self.entries:
                self.entries[parent] = (self._info(parent, tarfile.DIRTYPE, 0o755), None)
        self.entries[path] = (self._info(path, tarfile.DIRTYPE, mode, uid, gid), None)

    def file(self, path, data, mode=0o644):
        path = path.strip("/")
        parent = os.path.dirname(path)
        if parent and parent not in self.entries:
            self.dir(parent)
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.entries[path] = (info, data)

    def symlink(self, path, target):
        path = path.strip("/")
        parent = os.path.dirname(path)
        if parent and parent not in self.entries:
            self.dir(parent)
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.entries[path] = (info, None)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                info, data = self.entries[path]
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def linked_libraries(binary):
    """(path inside the image, path on this machine) of each library `ldd` lists."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []  # static (musl): nothing to copy
        sys.exit(f"oci-image: ldd {binary} failed: {out.stderr.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        m = re.match(r"^(\S+) => (\S+) \(0x[0-9a-f]+\)$", line) or re.match(r"^(/\S+) \(0x[0-9a-f]+\)$", line)
        if not m:
            if "linux-vdso" in line:
                continue
            if "not found" in line:
                sys.exit(f"oci-image: {binary} links a library that is not installed: {line}")
            continue
        host = m.group(m.lastindex)
        # The image keeps the path the binary asks for (the interpreter's
        # absolute path, the library's resolved directory).
        image_path = m.group(1) if m.group(1).startswith("/") else host
        libs.append((image_path, host))
    return libs


def base_layer(binary, mtime):
    layer = Layer(mtime)
    for d in ["bin", "etc", "home", "lib", "usr/local/bin", "var"]:
        layer.dir(d)
    layer.dir("tmp", mode=0o1777)
    layer.dir("home/nonroot", mode=0o700, uid=NONROOT, gid=NONROOT)
    layer.file("etc/passwd", (
        "root:x:0:0:root:/root:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
        f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n").encode())
    layer.file("etc/group", f"root:x:0:\nnogroup:x:65534:\nnonroot:x:{NONROOT}:\n".encode())
    layer.file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    bundle = next((p for p in CA_BUNDLES if os.path.isfile(p)), None)
    if bundle is None:
        sys.exit("oci-image: no CA bundle on this machine (apt-get install ca-certificates)")
    with open(bundle, "rb") as f:
        layer.file("etc/ssl/certs/ca-certificates.crt", f.read())
    for image_path, host in linked_libraries(binary):
        with open(os.path.realpath(host), "rb") as f:
            layer.file(image_path, f.read(), mode=0o755)
    return layer


def app_layer(binary, name, mtime):
    layer = Layer(mtime)
    with open(binary, "rb") as f:
        layer.file(f"usr/local/bin/{name}", f.read(), mode=0o755)
    return layer


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_blob(layout, data):
    digest = sha256(data)
    path = os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])
    with open(path, "wb") as f:
        f.write(data)
    return digest


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--name", required=True, help="binary name in the image and file name of the outputs")
    ap.add_argument("--ref", required=True, help="image reference, REPO:TAG")
    ap.add_argument("--out", required=True)
    ap.add_argument("--label", action="append", default=[], help="OCI label k=v (repeatable)")
    ap.add_argument("--port", action="append", default=[], help="exposed TCP port (repeatable)")
    ap.add_argument("--arg", action="append", default=[], help="argument after the entrypoint (repeatable)")
    args = ap.parse_args()

    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    labels = dict(kv.split("=", 1) for kv in args.label)
    created = labels.get("org.opencontainers.image.created", "1970-01-01T00:00:00Z")

    layers = []
    for layer in (base_layer(args.binary, mtime), app_layer(args.binary, args.name, mtime)):
        raw = layer.tar()
        gz = io.BytesIO()
        with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as z:
            z.write(raw)
        layers.append((raw, gz.getvalue()))

    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{NONROOT}:{NONROOT}",
            "Entrypoint": [f"/usr/local/bin/{args.name}"],
            "Cmd": args.arg,
            "Env": [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            ],
            "WorkingDir": "/home/nonroot",
            "Labels": labels,
            "ExposedPorts": {f"{p}/tcp": {} for p in args.port},
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(raw) for raw, _ in layers]},
        "history": [
            {"created": created, "created_by": "hack/oci-image.py: libraries, CA certificates, nonroot user"},
            {"created": created, "created_by": f"hack/oci-image.py: /usr/local/bin/{args.name}"},
        ],
    }

    layout = os.path.join(args.out, f"{args.name}.oci")
    shutil.rmtree(layout, ignore_errors=True)
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    config_bytes = canonical(config)
    config_digest = write_blob(layout, config_bytes)
    layer_descs = []
    for _, gz in layers:
        layer_descs.append({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": write_blob(layout, gz),
            "size": len(gz),
        })
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config_bytes)},
        "layers": layer_descs,
        "annotations": {k: v for k, v in labels.items() if k.startswith("org.opencontainers.image.")},
    }
    manifest_bytes = canonical(manifest)
    manifest_digest = write_blob(layout, manifest_bytes)
    tag = args.ref.rsplit(":", 1)[1] if ":" in args.ref.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "platform": {"architecture": "amd64", "os": "linux"},
            # containerd (`ctr images import`) names the image after the
            # first; the OCI spec's tools (crane, skopeo) read the second.
            "annotations": {"io.containerd.image.name": args.ref,
                            "org.opencontainers.image.ref.name": tag},
        }],
    }
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(layout, "index.json"), "wb") as f:
        f.write(canonical(index))
    # Docker's `docker load` reads manifest.json (paths of config and layers).
    docker_manifest = [{
        "Config": f"blobs/sha256/{config_digest.split(':')[1]}",
        "RepoTags": [args.ref],
        "Layers": [f"blobs/sha256/{d['digest'].split(':')[1]}" for d in layer_descs],
    }]
    with open(os.path.join(layout, "manifest.json"), "wb") as f:
        f.write(canonical(docker_manifest))

    archive = os.path.join(args.out, f"{args.name}.tar")
    with tarfile.open(archive + ".tmp", "w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(layout):
            dirs.sort()
            for fn in sorted(files):
                full = os.path.join(root, fn)
                info = tar.gettarinfo(full, os.path.relpath(full, layout))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = mtime
                with open(full, "rb") as f:
                    tar.addfile(info, f)
    os.replace(archive + ".tmp", archive)

    compressed = sum(d["size"] for d in layer_descs)
    uncompressed = sum(len(raw) for raw, _ in layers)
    print(json.dumps({
        "ref": args.ref,
        "digest": manifest_digest,
        "layout": layout,
        "archive": archive,
        "compressed_bytes": compressed,
        "uncompressed_bytes": uncompressed,
    }))


if __name__ == "__main__":
    main()
