//! PXE boot files for kacast nodes.
//!
//! [`install`] renders the embedded templates (`pxe-templates/` in the source
//! tree) into a TFTP root: every node that network-boots starts the kacast
//! installer (ka's `kamethod` label), with `kacast.session=`, `kacast.server=`
//! and `kacast.key=` on its kernel command line. Once a node is cloned,
//! [`set_local`] writes a per-MAC override so that this node boots its own disk
//! next time (ka-deploy made the admin edit the default by hand, for all nodes
//! at once); [`set_kamethod`] removes the override again.
//!
//! Templates know one syntax only: `{{name}}`, replaced by a value; see
//! [`render`] and `pxe-templates/README.md` for the names.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// What went wrong, naming the file, MAC or value concerned.
#[derive(Debug, thiserror::Error)]
pub enum PxeError {
    #[error("template {template}: no value for placeholder {{{{{name}}}}}")]
    MissingValue { template: String, name: String },
    #[error("template {template}: unknown placeholder {{{{{name}}}}} (known: {known})")]
    UnknownPlaceholder { template: String, name: String, known: String },
    #[error("template {template}: malformed placeholder near `{near}` (only {{{{name}}}} is allowed)")]
    Syntax { template: String, near: String },
    #[error("malformed MAC address '{mac}': {why}")]
    BadMac { mac: String, why: &'static str },
    #[error("bad {what} '{value}': {why}")]
    BadValue { what: &'static str, value: String, why: String },
    #[error("TFTP root {} is not a directory", .0.display())]
    NoTftpRoot(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PxeError + '_ {
    move |source| PxeError::Io { path: path.to_path_buf(), source }
}

/// Every placeholder a template may use.
pub const PLACEHOLDERS: &[&str] =
    &["kernel", "initrd", "session", "server", "append", "interface", "range", "proxy_net", "tftp_root"];

/// The embedded templates, by file name in `pxe-templates/`.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("pxelinux.cfg.default", PXELINUX_DEFAULT),
    ("pxelinux.cfg.local", PXELINUX_LOCAL),
    ("ipxe.script", IPXE_SCRIPT),
    ("ipxe.local", IPXE_LOCAL),
    ("grub-efi.cfg", GRUB_EFI),
    ("grub-efi.cfg.local", GRUB_EFI_LOCAL),
    ("dnsmasq-full.conf", DNSMASQ_FULL),
    ("dnsmasq-proxy.conf", DNSMASQ_PROXY),
];

pub const PXELINUX_DEFAULT: &str = include_str!("../../pxe-templates/pxelinux.cfg.default");
pub const PXELINUX_LOCAL: &str = include_str!("../../pxe-templates/pxelinux.cfg.local");
pub const IPXE_SCRIPT: &str = include_str!("../../pxe-templates/ipxe.script");
pub const IPXE_LOCAL: &str = include_str!("../../pxe-templates/ipxe.local");
pub const GRUB_EFI: &str = include_str!("../../pxe-templates/grub-efi.cfg");
pub const GRUB_EFI_LOCAL: &str = include_str!("../../pxe-templates/grub-efi.cfg.local");
pub const DNSMASQ_FULL: &str = include_str!("../../pxe-templates/dnsmasq-full.conf");
pub const DNSMASQ_PROXY: &str = include_str!("../../pxe-templates/dnsmasq-proxy.conf");

/// Where the files go, relative to the TFTP root.
pub const PXELINUX_CFG_DIR: &str = "pxelinux.cfg";
pub const IPXE_FILE: &str = "kacast.ipxe";
/// Per-MAC iPXE scripts, named as iPXE's `${mac:hexhyp}` spells them.
pub const IPXE_MAC_DIR: &str = "kacast-mac";
pub const GRUB_DIR: &str = "grub";

/// Boot loaders copied into the TFTP root when the distribution has them:
/// (name in the TFTP root, candidates, the package that provides them).
pub const LOADERS: &[(&str, &[&str], &str)] = &[
    ("pxelinux.0", &["/usr/lib/PXELINUX/pxelinux.0"], "pxelinux"),
    (
        "ldlinux.c32",
        &["/usr/lib/syslinux/modules/bios/ldlinux.c32", "/usr/share/syslinux/ldlinux.c32"],
        "syslinux-common",
    ),
    ("grubnetx64.efi", &["/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"], "grub-efi-amd64-signed"),
    ("ipxe.efi", &["/usr/lib/ipxe/ipxe.efi"], "ipxe"),
];

/// What to boot the nodes with, and how the dnsmasq configurations serve it.
#[derive(Debug, Clone)]
pub struct PxeConfig {
    /// The TFTP root the files are written into.
    pub tftp_root: PathBuf,
    /// The kernel, as a path inside the TFTP root.
    pub kernel: String,
    /// The initrd (with kacast in it), as a path inside the TFTP root.
    pub initrd: String,
    /// The session the nodes join (`kacast.session=`).
    pub session: String,
    /// `HOST:PORT` of the server (`kacast.server=`); none: found by broadcast.
    pub server: Option<String>,
    /// The session key's secret (`kacast.key=`), as in the key file.
    pub key: Option<String>,
    /// More kernel arguments, appended as given.
    pub extra_append: String,
    /// Interface dnsmasq serves (both configurations).
    pub interface: Option<String>,
    /// `START,END[,LEASE]` of the DHCP range; the proxy configuration serves START's network.
    pub range: Option<String>,
    /// Where dnsmasq-full.conf and dnsmasq-proxy.conf go (default: the TFTP root).
    pub dnsmasq_dir: Option<PathBuf>,
}

impl PxeConfig {
    pub fn new(tftp_root: impl Into<PathBuf>, kernel: &str, initrd: &str) -> PxeConfig {
        PxeConfig {
            tftp_root: tftp_root.into(),
            kernel: kernel.into(),
            initrd: initrd.into(),
            session: "kainstall".into(),
            server: None,
            key: None,
            extra_append: String::new(),
            interface: None,
            range: None,
            dnsmasq_dir: None,
        }
    }

    /// The kernel command line of the kamethod entry (without the initrd).
    pub fn append(&self) -> Result<String, PxeError> {
        word("session", &self.session)?;
        let mut a = format!("kamethod kacast.session={}", self.session);
        if let Some(s) = &self.server {
            word("server", s)?;
            a.push_str(&format!(" kacast.server={s}"));
        }
        if let Some(k) = &self.key {
            if k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(PxeError::BadValue {
                    what: "key",
                    value: "<secret>".into(),
                    why: "a key given on the kernel command line must be one word, not empty".into(),
                });
            }
            a.push_str(&format!(" kacast.key={k}"));
        }
        if self.extra_append.contains(['\n', '\r']) {
            return Err(PxeError::BadValue {
                what: "extra kernel arguments",
                value: self.extra_append.clone(),
                why: "must be one line".into(),
            });
        }
        let extra = self.extra_append.trim();
        if !extra.is_empty() {
            a.push(' ');
            a.push_str(extra);
        }
        Ok(a)
    }

    /// Every placeholder's value. Without interface and range, the dnsmasq ones are absent.
    pub fn values(&self) -> Result<BTreeMap<&'static str, String>, PxeError> {
        let mut v = BTreeMap::new();
        v.insert("kernel", tftp_path("kernel", &self.kernel)?);
        v.insert("initrd", tftp_path("initrd", &self.initrd)?);
        v.insert("append", self.append()?);
        v.insert("session", self.session.clone());
        v.insert("server", self.server.clone().unwrap_or_else(|| "found by broadcast".into()));
        v.insert("tftp_root", self.tftp_root.display().to_string());
        match (&self.interface, &self.range) {
            (Some(interface), Some(range)) => {
                word("interface", interface)?;
                v.insert("interface", interface.clone());
                v.insert("proxy_net", check_range(range)?.to_string());
                v.insert("range", range.clone());
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(PxeError::BadValue {
                    what: "dnsmasq settings",
                    value: format!("interface {:?}, range {:?}", self.interface, self.range),
                    why: "give both the interface and the range, or neither".into(),
                })
            }
        }
        Ok(v)
    }
}

fn word(what: &'static str, value: &str) -> Result<(), PxeError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(PxeError::BadValue {
            what,
            value: value.into(),
            why: "must be one word, not empty".into(),
        });
    }
    Ok(())
}

/// A path inside the TFTP root, without leading slashes.
fn tftp_path(what: &'static str, value: &str) -> Result<String, PxeError> {
    word(what, value)?;
    let p = value.trim_start_matches('/');
    if p.is_empty() || p.split('/').any(|c| c == "..") {
        return Err(PxeError::BadValue {
            what,
            value: value.into(),
            why: "must be a path inside the TFTP root".into(),
        });
    }
    Ok(p.to_string())
}

/// Checks `START,END[,…]` and returns START.
fn check_range(range: &str) -> Result<Ipv4Addr, PxeError> {
    let bad = |why: &str| PxeError::BadValue { what: "DHCP range", value: range.into(), why: why.into() };
    word("DHCP range", range)?;
    let mut parts = range.split(',');
    let start = parts.next().unwrap_or_default().parse::<Ipv4Addr>();
    let end = parts.next().map(str::parse::<Ipv4Addr>);
    match (start, end) {
        (Ok(s), Some(Ok(e))) if u32::from(s) <= u32::from(e) => Ok(s),
        (Ok(_), Some(Ok(_))) => Err(bad("the start is after the end")),
        _ => Err(bad("expected START,END[,LEASE] with IPv4 addresses")),
    }
}

/// The name of an embedded template with this text, for error messages.
fn template_name(template: &str) -> String {
    TEMPLATES
        .iter()
        .find(|(_, text)| *text == template)
        .map_or_else(|| "<inline>".to_string(), |(name, _)| name.to_string())
}

/// Replaces every `{{name}}` with its value. A placeholder without a value, a
/// name not in [`PLACEHOLDERS`] and any other use of `{{` are errors naming the
/// placeholder and the template. Values are inserted as they are, never expanded.
pub fn render(template: &str, values: &BTreeMap<&str, String>) -> Result<String, PxeError> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after.find("}}");
        let name = end.map(|e| &after[..e]);
        let valid =
            name.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        let (Some(name), Some(end), true) = (name, end, valid) else {
            let near: String = rest[at..].chars().take(24).take_while(|&c| c != '\n').collect();
            return Err(PxeError::Syntax { template: template_name(template), near });
        };
        if !PLACEHOLDERS.contains(&name) {
            return Err(PxeError::UnknownPlaceholder {
                template: template_name(template),
                name: name.into(),
                known: PLACEHOLDERS.join(", "),
            });
        }
        let value = values
            .get(name)
            .ok_or_else(|| PxeError::MissingValue { template: template_name(template), name: name.into() })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Writes `contents` to `path` through a temporary file in the same directory
/// and a rename, so a booting node never reads half a file.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), PxeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.kacast-{}", std::process::id()));
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(PxeError::Io { path: path.to_path_buf(), source });
    }
    Ok(())
}

fn check_root(tftp_root: &Path) -> Result<(), PxeError> {
    if !tftp_root.is_dir() {
        return Err(PxeError::NoTftpRoot(tftp_root.to_path_buf()));
    }
    Ok(())
}

/// Renders the boot files into the TFTP root (created if need be):
/// `pxelinux.cfg/default` (DEFAULT kamethod), `kacast.ipxe`, `grub/grub.cfg`,
/// and, given an interface and a range, `dnsmasq-full.conf` and
/// `dnsmasq-proxy.conf` (into [`PxeConfig::dnsmasq_dir`], default the TFTP
/// root). Copies the boot loaders of [`LOADERS`] the system has; says which it
/// lacks. Returns every file written.
pub fn install(cfg: &PxeConfig) -> Result<Vec<PathBuf>, PxeError> {
    let values = cfg.values()?;
    let root = &cfg.tftp_root;
    fs::create_dir_all(root).map_err(io(root))?;
    let mut outputs = vec![
        (root.join(PXELINUX_CFG_DIR).join("default"), PXELINUX_DEFAULT),
        (root.join(IPXE_FILE), IPXE_SCRIPT),
        (root.join(GRUB_DIR).join("grub.cfg"), GRUB_EFI),
    ];
    if values.contains_key("interface") {
        let dir = cfg.dnsmasq_dir.as_ref().unwrap_or(root);
        outputs.push((dir.join("dnsmasq-full.conf"), DNSMASQ_FULL));
        outputs.push((dir.join("dnsmasq-proxy.conf"), DNSMASQ_PROXY));
    } else {
        tracing::info!("no --interface/--range: dnsmasq configurations not written");
    }
    // Everything rendered before anything is written.
    let rendered = outputs
        .into_iter()
        .map(|(path, template)| Ok((path, render(template, &values)?)))
        .collect::<Result<Vec<_>, PxeError>>()?;
    let mut written = Vec::new();
    for (path, text) in rendered {
        write_atomic(&path, text.as_bytes())?;
        written.push(path);
    }
    for (name, candidates, package) in LOADERS {
        let target = root.join(name);
        match candidates.iter().map(Path::new).find(|p| p.is_file()) {
            Some(source) => {
                let bytes = fs::read(source).map_err(io(source))?;
                write_atomic(&target, &bytes)?;
                written.push(target);
            }
            None if target.exists() => {}
            None => tracing::warn!(
                "{name} not found ({}; package {package}): put it into {} yourself if nodes need it",
                candidates.join(", "),
                root.display()
            ),
        }
    }
    for file in [&cfg.kernel, &cfg.initrd] {
        let p = root.join(file.trim_start_matches('/'));
        if !p.exists() {
            tracing::warn!(
                "{} does not exist yet: copy the kernel and initrd into the TFTP root",
                p.display()
            );
        }
    }
    Ok(written)
}

/// pxelinux's per-MAC configuration name: `52:54:00:AB:cd:01` →
/// `01-52-54-00-ab-cd-01` (`01` is the Ethernet ARP type). Takes `:` or `-`
/// separated octets (one separator throughout), two hex digits each.
pub fn mac_config_name(mac: &str) -> Result<String, PxeError> {
    let bad = |why| PxeError::BadMac { mac: mac.into(), why };
    let sep = if mac.contains(':') { ':' } else { '-' };
    if mac.contains(':') && mac.contains('-') {
        return Err(bad("mixes ':' and '-' separators"));
    }
    let octets: Vec<&str> = mac.split(sep).collect();
    if octets.len() != 6 {
        return Err(bad("expected six octets like 52:54:00:ab:cd:01"));
    }
    if octets.iter().any(|o| o.len() != 2 || !o.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(bad("each octet is two hex digits"));
    }
    Ok(format!("01-{}", octets.join("-").to_ascii_lowercase()))
}

/// A node's per-MAC files: pxelinux's, GRUB EFI's (as GRUB's own per-MAC
/// lookup names it, and as kacast's grub.cfg looks for it) and iPXE's.
fn per_mac_paths(tftp_root: &Path, mac: &str) -> Result<[(PathBuf, &'static str); 4], PxeError> {
    let name = mac_config_name(mac)?;
    let hexhyp = &name[3..];
    let colons = hexhyp.replace('-', ":");
    Ok([
        (tftp_root.join(PXELINUX_CFG_DIR).join(&name), PXELINUX_LOCAL),
        (tftp_root.join(GRUB_DIR).join(format!("grub.cfg-{name}")), GRUB_EFI_LOCAL),
        (tftp_root.join(GRUB_DIR).join(format!("local-{colons}.cfg")), GRUB_EFI_LOCAL),
        (tftp_root.join(IPXE_MAC_DIR).join(format!("{hexhyp}.ipxe")), IPXE_LOCAL),
    ])
}

/// Makes the node with this MAC boot its local disk next time: writes
/// `pxelinux.cfg/01-…` (`LOCALBOOT 0`), `grub/grub.cfg-01-…` and
/// `kacast-mac/….ipxe` (both leave the network boot). Returns the pxelinux file.
pub fn set_local(tftp_root: &Path, mac: &str) -> Result<PathBuf, PxeError> {
    check_root(tftp_root)?;
    let files = per_mac_paths(tftp_root, mac)?;
    let none = BTreeMap::new();
    for (path, template) in &files {
        write_atomic(path, render(template, &none)?.as_bytes())?;
    }
    Ok(files[0].0.clone())
}

/// Removes the node's per-MAC override: it boots kamethod (the default) again.
/// Nothing to remove is not an error.
pub fn set_kamethod(tftp_root: &Path, mac: &str) -> Result<(), PxeError> {
    check_root(tftp_root)?;
    for (p, _) in per_mac_paths(tftp_root, mac)? {
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(PxeError::Io { path: p, source: e })
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_values() -> BTreeMap<&'static str, String> {
        let mut c = PxeConfig::new("/srv/tftp", "/kacast/vmlinuz", "kacast/initrd.img");
        c.server = Some("10.0.0.1:30765".into());
        c.key = Some("s3cret".into());
        c.interface = Some("br0".into());
        c.range = Some("10.0.0.30,10.0.0.40,12h".into());
        c.values().unwrap()
    }

    #[test]
    fn every_template_renders_completely() {
        let v = all_values();
        for (name, text) in TEMPLATES {
            let out = render(text, &v).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!out.contains("{{") && !out.contains("}}"), "{name}: {out}");
        }
        let pxe = render(PXELINUX_DEFAULT, &v).unwrap();
        assert!(pxe.contains("KERNEL kacast/vmlinuz\n"), "{pxe}");
        assert!(pxe.contains(
            "APPEND kamethod kacast.session=kainstall kacast.server=10.0.0.1:30765 kacast.key=s3cret"
        ));
        assert!(render(DNSMASQ_PROXY, &v).unwrap().contains("dhcp-range=10.0.0.30,proxy"));
    }

    #[test]
    fn render_errors_name_placeholder_and_template() {
        let e = render(GRUB_EFI, &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("grub-efi.cfg") && e.contains("{{session}}"), "{e}");
        let e = render("a {{colour}} b", &all_values()).unwrap_err().to_string();
        assert!(e.contains("unknown placeholder {{colour}}") && e.contains("<inline>"), "{e}");
        for bad in ["{{ kernel }}", "{{kernel", "{{}}", "{{Kernel}}"] {
            assert!(matches!(render(bad, &all_values()), Err(PxeError::Syntax { .. })), "{bad}");
        }
        // Values are not expanded again.
        let mut v = BTreeMap::new();
        v.insert("session", "{{kernel}}".to_string());
        assert_eq!(render("s={{session}}", &v).unwrap(), "s={{kernel}}");
    }

    #[test]
    fn mac_names() {
        assert_eq!(mac_config_name("52:54:00:AB:cd:01").unwrap(), "01-52-54-00-ab-cd-01");
        assert_eq!(mac_config_name("52-54-00-ab-CD-01").unwrap(), "01-52-54-00-ab-cd-01");
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "52:54-00:ab:cd:01",
            "5:54:00:ab:cd:01",
            "g2:54:00:ab:cd:01",
            "",
        ] {
            let e = mac_config_name(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
    }

    #[test]
    fn bad_values_refused() {
        let mut c = PxeConfig::new("/t", "vmlinuz", "initrd");
        c.session = "two words".into();
        assert!(c.values().unwrap_err().to_string().contains("session"));
        let mut c = PxeConfig::new("/t", "../vmlinuz", "initrd");
        assert!(c.values().unwrap_err().to_string().contains("kernel"));
        c.kernel = "vmlinuz".into();
        c.interface = Some("eth0".into());
        assert!(c.values().is_err(), "interface without range");
        c.range = Some("10.0.0.40,10.0.0.30".into());
        assert!(c.values().unwrap_err().to_string().contains("after the end"));
        c.range = Some("10.0.0.30".into());
        assert!(c.values().is_err());
    }
}
