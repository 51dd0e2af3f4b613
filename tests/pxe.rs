//! `kacast pxe` and the boot module: rendering, per-MAC overrides, the CLI, and
//! the dnsmasq configurations checked by dnsmasq itself when it is installed.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use kacast::boot::pxe::{self, PxeConfig, PxeError, PLACEHOLDERS, TEMPLATES};

fn full_config(root: &Path) -> PxeConfig {
    let mut c = PxeConfig::new(root, "kacast/vmlinuz", "kacast/initrd.img");
    c.session = "kainstall".into();
    c.server = Some("10.0.0.1:30765".into());
    c.key = Some("s3cret".into());
    c.extra_append = "console=ttyS0,115200".into();
    c.interface = Some("br0".into());
    c.range = Some("10.0.0.30,10.0.0.40,12h".into());
    c
}

#[test]
fn every_template_renders_with_every_placeholder() {
    let values = full_config(Path::new("/srv/tftp")).values().unwrap();
    for name in PLACEHOLDERS {
        assert!(values.contains_key(name), "no value for {name}");
    }
    for (name, text) in TEMPLATES {
        let out = pxe::render(text, &values).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!out.contains("{{"), "{name} still has a placeholder:\n{out}");
    }
    let append = "kamethod kacast.session=kainstall kacast.server=10.0.0.1:30765 kacast.key=s3cret \
                  console=ttyS0,115200";
    let pxelinux = pxe::render(pxe::PXELINUX_DEFAULT, &values).unwrap();
    for line in ["SERIAL 0 115200", "DEFAULT kamethod", "LABEL kamethod", "LABEL local", "LOCALBOOT 0"] {
        assert!(pxelinux.lines().any(|l| l.trim() == line), "no `{line}` in\n{pxelinux}");
    }
    assert!(pxelinux.contains(&format!("APPEND {append}\n")), "{pxelinux}");
    let ipxe = pxe::render(pxe::IPXE_SCRIPT, &values).unwrap();
    assert!(ipxe.starts_with("#!ipxe\n") && ipxe.contains(append), "{ipxe}");
    let grub = pxe::render(pxe::GRUB_EFI, &values).unwrap();
    assert!(grub.contains(&format!("linux /kacast/vmlinuz {append}\n")), "{grub}");
    assert!(grub.contains("--id local") && grub.contains("set default=kamethod"), "{grub}");
}

#[test]
fn missing_and_unknown_placeholders_are_named() {
    let mut values: BTreeMap<&str, String> = full_config(Path::new("/t")).values().unwrap();
    values.remove("initrd");
    let e = pxe::render(pxe::PXELINUX_DEFAULT, &values).unwrap_err();
    assert!(matches!(&e, PxeError::MissingValue { name, .. } if name == "initrd"), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("{{initrd}}") && msg.contains("pxelinux.cfg.default"), "{msg}");
    let e = pxe::render("KERNEL {{kernal}}", &values).unwrap_err().to_string();
    assert!(e.contains("unknown placeholder {{kernal}}"), "{e}");
    // Without a server the APPEND has none, and says nothing of a key.
    let mut c = PxeConfig::new("/t", "vmlinuz", "initrd.img");
    c.session = "getstage2".into();
    let out = pxe::render(pxe::PXELINUX_DEFAULT, &c.values().unwrap()).unwrap();
    assert!(out.contains("APPEND kamethod kacast.session=getstage2\n"), "{out}");
}

#[test]
fn mac_config_names() {
    assert_eq!(pxe::mac_config_name("52:54:00:AB:cd:01").unwrap(), "01-52-54-00-ab-cd-01");
    assert_eq!(pxe::mac_config_name("52-54-00-AB-CD-01").unwrap(), "01-52-54-00-ab-cd-01");
    for bad in
        ["52:54:00:ab:cd", "52:54:00:ab:cd:zz", "525400abcd01", "52:54:00:ab:cd:01 ", "01-52-54-00-ab-cd-01"]
    {
        assert!(pxe::mac_config_name(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn local_then_kamethod_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let written = pxe::install(&full_config(root)).unwrap();
    for f in
        ["pxelinux.cfg/default", "kacast.ipxe", "grub/grub.cfg", "dnsmasq-full.conf", "dnsmasq-proxy.conf"]
    {
        assert!(written.contains(&root.join(f)), "{f} not in {written:?}");
    }
    let default = fs::read_to_string(root.join("pxelinux.cfg/default")).unwrap();

    let p = pxe::set_local(root, "52:54:00:AB:CD:01").unwrap();
    assert_eq!(p, root.join("pxelinux.cfg/01-52-54-00-ab-cd-01"));
    let local = fs::read_to_string(&p).unwrap();
    assert!(local.contains("DEFAULT local") && local.contains("LOCALBOOT 0"), "{local}");
    let grub = root.join("grub/grub.cfg-01-52-54-00-ab-cd-01");
    assert!(fs::read_to_string(&grub).unwrap().contains("set default=local"));
    let ipxe = root.join("kacast-mac/52-54-00-ab-cd-01.ipxe");
    assert!(fs::read_to_string(&ipxe).unwrap().contains("\nexit\n"));
    // The default is untouched: the other nodes still boot kamethod.
    assert_eq!(fs::read_to_string(root.join("pxelinux.cfg/default")).unwrap(), default);

    pxe::set_kamethod(root, "52-54-00-ab-cd-01").unwrap();
    assert!(!p.exists() && !grub.exists() && !ipxe.exists());
    pxe::set_kamethod(root, "52-54-00-ab-cd-01").expect("twice is fine");
    // No stray temporary files.
    let names: Vec<_> =
        fs::read_dir(root.join("pxelinux.cfg")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["default"]);

    assert!(matches!(pxe::set_local(root, "nonsense"), Err(PxeError::BadMac { .. })));
    assert!(matches!(pxe::set_local(&root.join("nope"), "52:54:00:ab:cd:01"), Err(PxeError::NoTftpRoot(_))));
}

fn kacast(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kacast")).args(args).output().expect("run kacast")
}

#[test]
fn cli_writes_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tftp");
    let conf = dir.path().join("dnsmasq");
    let key = dir.path().join("key");
    fs::write(&key, "s3cret\n").unwrap();
    let root_s = root.to_str().unwrap();
    let out = kacast(&[
        "pxe",
        "render",
        "--tftp-root",
        root_s,
        "--kernel",
        "vmlinuz",
        "--initrd",
        "initrd.img",
        "--server",
        "10.0.0.1:30765",
        "--key-file",
        key.to_str().unwrap(),
        "--interface",
        "br0",
        "--range",
        "10.0.0.30,10.0.0.40",
        "--dnsmasq-dir",
        conf.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let default = fs::read_to_string(root.join("pxelinux.cfg/default")).unwrap();
    assert!(
        default.contains(
            "APPEND kamethod kacast.session=kainstall kacast.server=10.0.0.1:30765 kacast.key=s3cret\n"
        ),
        "{default}"
    );
    // The key as written is the key the server reads from the file.
    let cmdline = default.lines().find(|l| l.trim_start().starts_with("APPEND")).unwrap();
    let from_cmdline = kacast::auth::Key::from_cmdline(cmdline).unwrap().unwrap();
    assert_eq!(from_cmdline, kacast::auth::Key::from_file(&key).unwrap());
    assert!(root.join("kacast.ipxe").is_file() && root.join("grub/grub.cfg").is_file());
    assert!(fs::read_to_string(conf.join("dnsmasq-full.conf"))
        .unwrap()
        .contains(&format!("tftp-root={root_s}\n")));
    assert!(fs::read_to_string(conf.join("dnsmasq-proxy.conf"))
        .unwrap()
        .contains("dhcp-range=10.0.0.30,proxy\n"));

    let out = kacast(&["pxe", "local", "--tftp-root", root_s, "52:54:00:ab:cd:01", "52:54:00:ab:cd:02"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(root.join("pxelinux.cfg/01-52-54-00-ab-cd-02").is_file());
    // One bad MAC: nothing changes.
    let out = kacast(&["pxe", "kamethod", "--tftp-root", root_s, "52:54:00:ab:cd:01", "bogus"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'bogus'"));
    assert!(root.join("pxelinux.cfg/01-52-54-00-ab-cd-01").is_file());
    let out = kacast(&["pxe", "kamethod", "--tftp-root", root_s, "52:54:00:ab:cd:01"]);
    assert!(out.status.success());
    assert!(!root.join("pxelinux.cfg/01-52-54-00-ab-cd-01").exists());
    assert!(root.join("pxelinux.cfg/01-52-54-00-ab-cd-02").is_file());
}

#[test]
fn dnsmasq_accepts_the_configurations() {
    if let Some(why) = common::missing_tool("dnsmasq") {
        return common::skip(&why);
    }
    let dir = tempfile::tempdir().unwrap();
    pxe::install(&full_config(dir.path())).unwrap();
    for name in ["dnsmasq-full.conf", "dnsmasq-proxy.conf"] {
        let file = dir.path().join(name);
        let out = Command::new("dnsmasq")
            .arg("--test")
            .arg(format!("--conf-file={}", file.display()))
            .output()
            .unwrap();
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.contains("syntax check OK"), "{name}: {said}");
    }
}
