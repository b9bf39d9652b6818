//! Subcommand arguments the way Dokku's Go plugins read them with pflag: `--flag`, `--flag value`, `--flag=value`,
//! short flags where a command has them (`logs -n 5`), and exit 2 with a usage text for an unknown flag.

use crate::out::Failure;

/// The flags one subcommand accepts.
pub struct Spec {
    pub command: &'static str,
    /// Flags without a value, with their dashes: `--force`, `-t`.
    pub switches: &'static [&'static str],
    /// Flags that take a value: `--format`, `-n`.
    pub options: &'static [&'static str],
}

#[derive(Debug, Default)]
pub struct Parsed {
    switches: Vec<&'static str>,
    options: Vec<(&'static str, String)>,
    pub positionals: Vec<String>,
}

impl Parsed {
    /// Whether a switch was given.
    pub fn has(&self, flag: &str) -> bool {
        self.switches.contains(&flag)
    }

    /// The value of an option; the last one wins.
    pub fn value(&self, flag: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(name, _)| *name == flag)
            .map(|(_, value)| value.as_str())
    }
}

/// Splits `args` into flags and positionals. `app` (from a leading `--app X`) becomes the first positional.
pub fn parse(spec: &Spec, args: &[String], app: Option<&str>) -> Result<Parsed, Failure> {
    let mut parsed = Parsed::default();
    parsed.positionals.extend(app.map(String::from));
    let mut iter = args.iter();
    let mut only_positionals = false;
    while let Some(arg) = iter.next() {
        if only_positionals || !arg.starts_with('-') || arg == "-" {
            parsed.positionals.push(arg.clone());
            continue;
        }
        if arg == "--" {
            only_positionals = true;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value)),
            _ => (arg.as_str(), None),
        };
        if let Some(switch) = spec.switches.iter().find(|switch| **switch == name) {
            // pflag accepts `--force=true`; `--force=false` turns it off.
            if inline != Some("false") {
                parsed.switches.push(switch);
            }
        } else if let Some(option) = spec.options.iter().find(|option| **option == name) {
            let value = match inline {
                Some(value) => value.to_string(),
                None => iter
                    .next()
                    .cloned()
                    .ok_or_else(|| usage_error(spec, format!("flag needs an argument: {name}")))?,
            };
            parsed.options.push((option, value));
        } else if name.starts_with("--") {
            return Err(usage_error(spec, format!("unknown flag: {name}")));
        } else {
            let shorthand = name.chars().nth(1).unwrap_or('-');
            return Err(usage_error(
                spec,
                format!("unknown shorthand flag: '{shorthand}' in {arg}"),
            ));
        }
    }
    Ok(parsed)
}

/// pflag's `ExitOnError` output: the error, `Usage of <cmd>:` and the flags, exit 2.
fn usage_error(spec: &Spec, error: String) -> Failure {
    let mut lines = vec![error, format!("Usage of {}:", spec.command)];
    lines.extend(spec.switches.iter().map(|switch| format!("      {switch}")));
    lines.extend(
        spec.options
            .iter()
            .map(|option| format!("      {option} string")),
    );
    Failure::raw(2, lines)
}
