//! Booting the nodes into kacast: PXE, iPXE and GRUB EFI netboot files and the
//! dnsmasq configurations that serve them (ka-deploy's "Step 1: PXE, TFTP,
//! DHCPD services" and its "PXE server to local boot", without editing by hand).

pub mod cmdline;
pub mod initrd;
pub mod pxe;
pub mod stage2;

pub use cmdline::KernelArgs;
pub use pxe::{install, mac_config_name, render, set_kamethod, set_local, PxeConfig, PxeError};
