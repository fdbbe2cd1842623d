//! Secret variables kept from blocks and scheduler commands.

/// True for a variable of the agent's environment that holds a secret (the
/// owner's `HPFAAS_TOKEN`, and any `HPFAAS_*` key, password or credential):
/// blocks and scheduler commands never get one, since tasks run as the same
/// user as the block and can read its processes' environments.
pub fn is_secret_variable(name: &std::ffi::OsStr) -> bool {
    let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("HPFAAS_")) else {
        return false;
    };
    ["TOKEN", "KEY", "SECRET", "CREDENTIAL", "PASSWORD"]
        .iter()
        .any(|word| rest.contains(word))
}

/// Removes this process's secret variables ([`is_secret_variable`]) from
/// what `command` will inherit.
pub fn strip_secrets(command: &mut std::process::Command) {
    for (name, _) in std::env::vars_os() {
        if is_secret_variable(&name) {
            command.env_remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_told_apart() {
        for secret in [
            "HPFAAS_TOKEN",
            "HPFAAS_OWNER_TOKEN",
            "HPFAAS_TLS_KEY",
            "HPFAAS_CURVE_SECRET",
            "HPFAAS_PASSWORD",
        ] {
            assert!(is_secret_variable(secret.as_ref()), "{secret}");
        }
        for plain in [
            "HPFAAS_HOME",
            "HPFAAS_URL",
            "TOKEN",
            "PATH",
            "HPFAAS_EMULATOR_STATE",
        ] {
            assert!(!is_secret_variable(plain.as_ref()), "{plain}");
        }
    }
}
