//! Descriptions shared by the unit tests of the environment modules:
//! Grid'5000's debian11-min in kaenv3 YAML and the Xen example of Kadeploy 3's
//! user guide in the old format, with helpers to read them and to name the
//! field of an error. Several modules test against the same two descriptions,
//! so they are written once here.

use super::{EnvError, Environment};

/// Written like Grid'5000's debian11-min description (`kaenv3 -p debian11-min`).
pub(super) const G5K_YAML: &str = "---
name: debian11-min
version: 2023040314
arch: x86_64
description: debian 11 (bullseye) for x64 - min
author: support-staff@lists.grid5000.fr
visibility: public
destructive: false
os: linux
image:
  file: server:///grid5000/images/debian11-min.tar.zst
  kind: tar
  compression: zstd
postinstalls:
- archive: server:///grid5000/postinstalls/g5k-postinstall.tgz
  compression: gzip
  script: g5k-postinstall --net debian --disk-aliases
boot:
  kernel: \"/vmlinuz\"
  initrd: \"/initrd.img\"
  kernel_params: ''
filesystem: ext4
partition_type: 131
multipart: false
";

/// The example of Kadeploy 3's user guide ("Environment description").
pub(super) const LEGACY_XEN: &str = "name : xen
version : 1
description : https://www.grid5000.fr/index.php/Etch-x64-xen-1.0
author : John Smith
tarball : /grid5000/etch-x64-xen-1.0.tgz|tgz
preinstall : /home/john/test/pre_install.tgz|tgz|launch.sh
postinstall : /home/john/test/post_install.tgz|tgz|traitement.sh
kernel : /boot/vmlinuz-2.6.18-6-xen-amd64
kernel_params : console=tty0 console=ttyS1,38400n8
initrd : /boot/initrd.img-2.6.18-6-xen-amd64
hypervisor : /boot/xen-3.0.3-1-amd64.gz
hypervisor_params : dom0_mem=1000000
fdisktype : 83
filesystem : ext2
environment_kind : xen
visibility : shared
demolishing_env : 0
";

pub(super) fn g5k() -> Environment {
    Environment::parse_yaml(G5K_YAML, "debian11-min.yaml").unwrap()
}

pub(super) fn field_of(err: &EnvError) -> &str {
    match err {
        EnvError::Field { field, .. } => field,
        other => panic!("expected a field error, got {other}"),
    }
}
