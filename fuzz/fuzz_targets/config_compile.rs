//! `config::Config::from_json`: any plugin configuration compiles or is refused with an
//! error, never a panic (on_configure would trap and take the VM down), with environment
//! variables absent or all set. A secret that came from the environment never shows in
//! the compiled config's `Debug` output or in an error message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_gateway::config::Config;

/// The value of every `*_env` variable: long enough for any HMAC secret (a `jwk_env` is
/// not JSON, so that path sees a refusal).
const ENV_SECRET: &str = "fuzz-env-secret-0123456789abcdef0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    // Unless the config itself spells the value out (say, as a server name).
    let secret_in_input = data.windows(ENV_SECRET.len()).any(|w| w == ENV_SECRET.as_bytes());
    let absent = Config::from_json(data, &|_| None);
    let present = Config::from_json(data, &|_| Some(ENV_SECRET.to_owned()));
    for result in [absent, present] {
        let shown = match result {
            Ok(config) => {
                assert!(!config.servers.is_empty());
                format!("{config:?}")
            }
            Err(e) => e.to_string(),
        };
        assert!(secret_in_input || !shown.contains(ENV_SECRET), "secret printed: {shown}");
    }
});
