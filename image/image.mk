# Appliance image: `make image` (included by the top Makefile).
#   make image [OVERLAYS="dir ..."] [PROFILE=image/profiles/x.toml]
#              [SIGNING_KEY=key.pem SIGNING_CERT=cert.pem [KEYRING=ca.pem]]
#              [PROTOCOLS=previous]  (speaks only the previous release's protocol
#                                     versions; version +previous: the upgrade test's start)
#   (no SIGNING_KEY: a development key in build/rauc-dev/, see docs/upgrade.md)
#   make release SIGNING_KEY=key.pem SIGNING_CERT=cert.pem [KEYRING=ca.pem] [DEVELOPMENT=1]
#                a tagged release (git tag vX.Y.Z, clean tree, its CHANGELOG.md entry):
#                build/release/<version>/fwcluster-<version>-amd64.{img,img.xz,raucb,...}
#   make bench-image
#   make demo-vm      two appliances from the image under qemu (tests/vm, docs/vm-lab.md)
# Build tools come from apt; the builder runs with Debian's python3 so that
# `make image` needs no venv.
IMAGE_APT_PKGS := mmdebstrap debian-archive-keyring qemu-system-x86 qemu-utils \
	grub-common grub-pc-bin grub-efi-amd64-bin ovmf dosfstools mtools e2fsprogs \
	fdisk xz-utils python3-pip openssh-client
IMAGE_PY := /usr/bin/python3
PROFILE ?= image/profiles/default.toml
OVERLAYS ?=
SIGNING_KEY ?= $(FWCLUSTER_SIGNING_KEY)
SIGNING_CERT ?= $(FWCLUSTER_SIGNING_CERT)
KEYRING ?= $(FWCLUSTER_KEYRING)
PROTOCOLS ?=

.PHONY: image release bench-image image-deps demo-vm

$(STAMPS)/image-apt: image/image.mk | $(STAMPS)
	@if ! dpkg -s $(IMAGE_APT_PKGS) >/dev/null 2>&1; then \
		echo "== apt: installing $(IMAGE_APT_PKGS)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -q --no-install-recommends $(IMAGE_APT_PKGS); \
	fi
	touch $@

image-deps: $(STAMPS)/image-apt

image: $(STAMPS)/image-apt
	FWCLUSTER_SIGNING_KEY="$(SIGNING_KEY)" FWCLUSTER_SIGNING_CERT="$(SIGNING_CERT)" \
		FWCLUSTER_KEYRING="$(KEYRING)" \
		$(IMAGE_PY) -m image build --profile $(PROFILE) $(if $(OVERLAYS),--overlays "$(OVERLAYS)") \
		$(if $(PROTOCOLS),--protocols $(PROTOCOLS))

release: $(STAMPS)/image-apt
	FWCLUSTER_SIGNING_KEY="$(SIGNING_KEY)" FWCLUSTER_SIGNING_CERT="$(SIGNING_CERT)" \
		FWCLUSTER_KEYRING="$(KEYRING)" \
		$(IMAGE_PY) -m image release --profile $(PROFILE) $(if $(DEVELOPMENT),--development)

bench-image: $(STAMPS)/image-apt deps
	$(PY) -m bench.image

demo-vm: $(STAMPS)/image-apt deps
	$(PY) -m tests.vm

# The image tests in tests/image and tests/vm need the build tools too.
test test-upgrade: $(STAMPS)/image-apt
