#!/usr/bin/env bash
# Builds the Debian package and checks it without installing it on this machine: control
# data, conffiles, contents, maintainer scripts, the unpacked binary and pipeline, the systemd
# unit; and the container's files. Run from anywhere; CI runs it (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "packaging: $*" >&2; exit 1; }

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
rm -rf target/debian
cargo deb --quiet
deb=$(ls target/debian/spooky_*.deb | head -n 1)
[ -f "$deb" ] || fail "no package built"
echo "built $deb ($(du -h "$deb" | cut -f1))"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# Control data.
dpkg-deb --field "$deb" Package | grep -qx spooky || fail "Package is not spooky"
dpkg-deb --field "$deb" Depends | grep -q adduser || fail "Depends lacks adduser (postinst uses it)"
dpkg-deb -e "$deb" "$scratch/control"
grep -qx /etc/spooky/spooky.toml "$scratch/control/conffiles" || fail "spooky.toml is not a conffile"
for s in postinst prerm postrm; do
  [ -x "$scratch/control/$s" ] || fail "$s missing or not executable"
  sh -n "$scratch/control/$s" || fail "$s: shell syntax"
done
grep -q "adduser --system" "$scratch/control/postinst" || fail "postinst creates no system user"
grep -q "purge" "$scratch/control/postrm" || fail "postrm does nothing on purge"

# Contents.
contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/spooky ./etc/spooky/spooky.toml ./lib/systemd/system/spooky.service \
         ./etc/logrotate.d/spooky ./usr/share/doc/spooky/runbook.md \
         ./usr/share/doc/spooky/reference.toml ./usr/share/doc/spooky/grafana-dashboard.json; do
  grep -q " $f\$" <<<"$contents" || fail "$f is not in the package"
done
grep -E " \./usr/bin/spooky$" <<<"$contents" | grep -q '^-rwxr-xr-x' || fail "the binary is not 0755"

# Unpacked: the binary runs and accepts the shipped pipeline.
dpkg-deb -x "$deb" "$scratch/root"
"$scratch/root/usr/bin/spooky" --version
"$scratch/root/usr/bin/spooky" check "$scratch/root/etc/spooky/spooky.toml"

# The unit: hardened as promised, and accepted by systemd.
unit="$scratch/root/lib/systemd/system/spooky.service"
for key in "ProtectSystem=strict" "NoNewPrivileges=yes" "AmbientCapabilities=CAP_NET_BIND_SERVICE" \
           "User=spooky" "ExecReload=/bin/kill -HUP \$MAINPID" "LimitNOFILE=" "Type=notify"; do
  grep -qF "$key" "$unit" || fail "the unit lacks $key"
done
if command -v systemd-analyze >/dev/null 2>&1; then
  # Verified against the unpacked binary (the unit names /usr/bin/spooky).
  mkdir -p "$scratch/units"
  sed "s#/usr/bin/spooky#$scratch/root/usr/bin/spooky#g" "$unit" > "$scratch/units/spooky.service"
  if ! out=$(systemd-analyze verify "$scratch/units/spooky.service" 2>&1); then
    echo "$out"; fail "systemd-analyze verify rejects the unit"
  fi
  if grep -i "spooky.service" <<<"$out" | grep -vi "not executable" | grep -q .; then
    echo "$out"; fail "systemd-analyze verify warns about the unit"
  fi
  echo "systemd-analyze verify: ok"
else
  echo "systemd-analyze not here: unit not verified"
fi

# The container: its pipeline is valid and every file it copies exists.
"$scratch/root/usr/bin/spooky" check packaging/docker/spooky.toml
grep -E '^COPY packaging/' packaging/docker/Dockerfile | awk '{print $2}' | while read -r f; do
  [ -f "$f" ] || fail "the Dockerfile copies $f, which does not exist"
done
grep -q '^USER spooky' packaging/docker/Dockerfile || fail "the image runs as root"
grep -q '^HEALTHCHECK' packaging/docker/Dockerfile || fail "the image has no HEALTHCHECK"
echo "packaging: ok"
