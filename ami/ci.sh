#!/bin/bash
# The AMI part of CI: shellcheck every script, `packer fmt` + `packer validate` the
# template, then the local image build and its tests (build-local.sh: debootstrap
# chroot, provisioning twice, systemd-analyze verify, in-image tests, boot test).
#
#   ami/ci.sh [PATH-TO-BUCKETGATE-BINARY]     (or BUCKETGATE_BINARY=...)
#
# Without a binary it provisions a small stand-in script and says so: the image
# checks do not need the real gateway, but CI should pass target/{debug,release}/bucketgate.
# Installs what it needs from Debian (packer 1.6.6, shellcheck, debootstrap, python3,
# smbclient for the boot test's SMB share).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start=$SECONDS
binary=${1:-${BUCKETGATE_BINARY:-}}
step() { echo "== ami/ci: $* (+$((SECONDS - start))s)"; }

need=()
for tool in packer:packer shellcheck:shellcheck debootstrap:debootstrap /usr/bin/python3:python3 \
    curl:curl unshare:util-linux nsenter:util-linux smbclient:smbclient; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if ((${#need[@]})); then
    step "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp" "$here/.packer-validate"' EXIT
if [[ -z $binary ]]; then
    binary=$tmp/bucketgate
    cat >"$binary" <<'STANDIN'
#!/bin/sh
# STAND-IN for the bucketgate binary (ami/ci.sh was given none): enough for the image
# tests, which call --version and check-config (rejects a config without [[share]]).
case "$1" in
--version) echo "bucketgate 0.0.0-standin" ;;
check-config)
    [ "$2" = --config ] && [ -r "$3" ] || { echo "usage: check-config --config FILE" >&2; exit 2; }
    grep -q '^\[\[share\]\]' "$3" || { echo "error: at least one [[share]] is required" >&2; exit 1; } ;;
*) echo "bucketgate stand-in: $*" >&2; exit 1 ;;
esac
STANDIN
    chmod 0755 "$binary"
    echo "ami/ci: NOTE: no bucketgate binary given; using a stand-in script ($binary)"
fi
binary=$(readlink -f "$binary")
[[ -x $binary ]] || { echo "ami/ci: $binary is not executable" >&2; exit 2; }

step "shellcheck"
# Every file under ami/ whose first line is a sh/bash shebang, or named *.sh.
scripts=()
while IFS= read -r -d '' f; do
    if [[ $f == *.sh ]] || head -n1 "$here/$f" | grep -qE '^#!(/usr)?/bin/(env )?(ba)?sh'; then
        scripts+=("$f")
    fi
done < <(cd "$here" && find . -type f ! -path './.packer-validate/*' -print0 | sort -z)
(cd "$here" && shellcheck --severity=style "${scripts[@]}")
echo "ami/ci: shellcheck clean: ${scripts[*]}"

step "packer ($(packer version | head -n1))"
template=$here/packer/bucketgate.pkr.hcl
# The whole template parses and is formatted (also the parts 1.6.6 cannot validate).
packer fmt -check -diff "$here/packer"
# IMDSv2 must stay required, even though Debian's packer cannot validate that block.
grep -Eq '^\s*http_tokens\s*=\s*"required"' "$template" || { echo "ami/ci: http_tokens = \"required\" missing" >&2; exit 1; }
grep -Eq '^\s*imds_support\s*=\s*"v2.0"' "$template" || { echo "ami/ci: imds_support = \"v2.0\" missing" >&2; exit 1; }
# packer 1.6.6 (Debian 12) predates metadata_options/imds_support/required_plugins: cut
# the marked lines and validate the rest. Same directory depth, so ${path.root}/.. is ami/.
rm -rf "$here/.packer-validate" && mkdir "$here/.packer-validate"
sed '/# packer>=1.7 only: begin/,/# packer>=1.7 only: end/d' "$template" >"$here/.packer-validate/bucketgate.pkr.hcl"
echo "ami/ci: validating without the packer>=1.7-only lines (the cut lines are the ones starting with <):"
{ diff "$template" "$here/.packer-validate/bucketgate.pkr.hcl" || true; } | sed -n 's/^< /    cut: /p'
(cd "$here/.packer-validate" && packer validate -var version=ci -var "bucketgate_binary=$binary" .)
echo "ami/ci: packer validate: ok"

step "local image build and tests"
version="ci-$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo local)"
bash "$here/build-local.sh" --binary "$binary" --version "$version"

step "ok: shellcheck, packer fmt/validate, local build and tests passed in $((SECONDS - start))s"
