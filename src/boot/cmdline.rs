//! What the PXE `kamethod` entry tells a node on its kernel command line
//! (`kacast.session=`, `kacast.server=`, `kacast.key=`), read by
//! `kacast install --from-cmdline` in the initrd.

/// The kacast words of a kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelArgs {
    /// ka's `kamethod` word: this boot is for cloning.
    pub kamethod: bool,
    pub session: Option<String>,
    pub server: Option<String>,
    /// Whether `kacast.key=` is there (read with [`crate::auth::Key::from_cmdline`]).
    pub has_key: bool,
}

impl KernelArgs {
    pub fn parse(cmdline: &str) -> KernelArgs {
        let mut k = KernelArgs::default();
        for word in cmdline.split_whitespace() {
            match word.split_once('=') {
                Some(("kacast.session", v)) if !v.is_empty() => k.session = Some(v.to_string()),
                Some(("kacast.server", v)) if !v.is_empty() => k.server = Some(v.to_string()),
                Some(("kacast.key", _)) => k.has_key = true,
                None if word == "kamethod" => k.kamethod = true,
                _ => {}
            }
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kamethod_append_line() {
        let k = KernelArgs::parse(
            "initrd=kacast/initrd.img console=ttyS0 kamethod kacast.session=kainstall kacast.server=10.0.0.1:30765 kacast.key=s3cret quiet",
        );
        assert!(k.kamethod && k.has_key);
        assert_eq!(k.session.as_deref(), Some("kainstall"));
        assert_eq!(k.server.as_deref(), Some("10.0.0.1:30765"));
        assert_eq!(KernelArgs::parse("ro quiet kacast.session="), KernelArgs::default());
    }
}
