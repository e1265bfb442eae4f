//! `$SUPERVISOR_CONFIG` really is read. This is the only test that sets the variable,
//! alone in its own test binary so no other test sees it change.

use std::path::{Path, PathBuf};

use supervisor_config::{default_config_path, CONFIG_ENV};

#[test]
fn env_var_names_the_config_unless_cli_does() {
    std::env::set_var(CONFIG_ENV, "/etc/from-env.json");
    assert_eq!(
        default_config_path(None),
        PathBuf::from("/etc/from-env.json")
    );
    assert_eq!(
        default_config_path(Some(Path::new("cli.json"))),
        PathBuf::from("cli.json")
    );
    std::env::remove_var(CONFIG_ENV);
    assert_eq!(
        default_config_path(None),
        PathBuf::from("./supervisor.json")
    );
}
