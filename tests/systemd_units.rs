//! The unit files in `contrib/systemd/` pass `systemd-analyze verify`
//! (unknown keys, bad values, a command that is not there), checked with
//! the binary under test in place of the installed one.

mod common;

use std::path::Path;
use std::process::Command;

use common::temp_dir;

/// `systemd-analyze`, or `None` (with the reason printed) where it is absent.
fn systemd_analyze(test: &str) -> Option<()> {
    let found = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("{test}: skipped: systemd-analyze is not installed (Debian package systemd)");
        // scripts/setup.sh installs it: CI always checks the units.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI runs scripts/setup.sh, which installs systemd"
        );
    }
    found.then_some(())
}

/// Copies `unit` from contrib/systemd into `dir`, its `hpfaas` path replaced.
fn copy_unit(unit: &str, installed_at: &str, dir: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/systemd")
        .join(unit);
    let text = std::fs::read_to_string(&source).unwrap();
    assert!(
        text.contains(installed_at),
        "{unit} runs {installed_at}, as docs/deploy.md says"
    );
    let text = text.replace(installed_at, env!("CARGO_BIN_EXE_hpfaas"));
    std::fs::write(dir.join(unit), text).unwrap();
}

/// Runs `systemd-analyze [--user] verify PATH`: it must succeed and say
/// nothing (a misspelled key is only a warning to it).
fn verify(user: bool, path: &Path, runtime_dir: &Path) {
    let mut command = Command::new("systemd-analyze");
    if user {
        command.arg("--user");
    }
    let out = command
        .arg("verify")
        .arg(path)
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{}: {said}",
        path.display()
    );
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let test = "unit_files_pass_systemd_analyze_verify";
    if systemd_analyze(test).is_none() {
        return;
    }
    let dir = temp_dir("systemd-units");
    // A user manager's runtime directory, for `--user`.
    let runtime = dir.join("run");
    std::fs::create_dir(&runtime).unwrap();
    copy_unit("hpfaas-service.service", "/usr/local/bin/hpfaas", &dir);
    copy_unit("hpfaas-endpoint@.service", "%h/.local/bin/hpfaas", &dir);
    verify(false, &dir.join("hpfaas-service.service"), &runtime);
    // A template is verified through one of its instances.
    verify(true, &dir.join("hpfaas-endpoint@demo.service"), &runtime);

    // The check itself: a misspelled key is caught.
    let unit = dir.join("hpfaas-service.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(&unit, text.replace("ProtectSystem=", "ProtectSytem=")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ProtectSytem"),
        "{out:?}"
    );
}
