//! Kastafior's command line (Kadeploy's older broadcast tool):
//! `kastafior [-c CONNECTOR] -- -s "<source cmd>" -c "<node cmd>" -n NODEFILE [-p PORT]`.
//! The source command's output goes down the chain in node-file order; the
//! exit status is 0 when every node's command succeeded, 1 otherwise.

use super::args::KascadeArgs;
use crate::session::Input;

/// Runs Kastafior's command line (without the program name).
pub fn run(argv: &[String]) -> i32 {
    match parse(argv) {
        Ok((args, source)) => match super::run::run_with_input(&args, Input::Command(source)) {
            0 => 0,
            _ => 1,
        },
        Err(e) => {
            eprintln!("kastafior: {e}");
            1
        }
    }
}

/// Kastafior's options into Kascade's, and the source command.
fn parse(argv: &[String]) -> Result<(KascadeArgs, String), String> {
    let split = argv.iter().position(|a| a == "--");
    let (launcher, own) = match split {
        Some(i) => (&argv[..i], &argv[i + 1..]),
        None => (&argv[..0], argv),
    };
    let value = |list: &[String], flag: &str| -> Option<String> {
        list.iter().position(|a| a == flag).and_then(|i| list.get(i + 1)).cloned()
    };
    let source = value(own, "-s").ok_or("missing -s \"<source command>\"")?;
    let command = value(own, "-c").ok_or("missing -c \"<node command>\"")?;
    let nodes = value(own, "-n").ok_or("missing -n NODEFILE")?;
    let mut kascade = vec!["-i".to_string(), "-".into(), "-n".into(), nodes, "-O".into(), command];
    if let Some(connector) = value(launcher, "-c") {
        kascade.extend(["-S".to_string(), connector]);
    }
    if let Some(port) = value(own, "-p") {
        kascade.extend(["-p".to_string(), port]);
    }
    let args = KascadeArgs::parse_from(std::iter::once("kastafior".to_string()).chain(kascade))
        .map_err(|e| e.to_string())?;
    Ok((args, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn kadeploys_kastafior_line() {
        let (args, source) = parse(&argv(&[
            "-s",
            "-c",
            "ssh -o BatchMode=yes",
            "--",
            "-s",
            "cat /tmp/env.tgz",
            "-c",
            "tar -xz -C /mnt/dest",
            "-n",
            "/tmp/nodes",
        ]))
        .unwrap();
        assert_eq!(source, "cat /tmp/env.tgz");
        assert_eq!(args.command.as_deref(), Some("tar -xz -C /mnt/dest"));
        assert_eq!(args.ssh.as_deref(), Some("ssh -o BatchMode=yes"));
        assert_eq!(args.node_file.as_deref(), Some("/tmp/nodes"));
        assert!(parse(&argv(&["--", "-c", "x", "-n", "f"])).unwrap_err().contains("-s"));
    }
}
