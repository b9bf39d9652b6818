//! `logs <app>`: the app log that deploys, restarts and stops append to. There are no containers, so `--tail`
//! prints what there is and exits instead of following.

use crate::Ctx;
use crate::args::{self, Spec};
use crate::deploy;
use crate::out::{CmdResult, Failure};

const LOGS: Spec = Spec {
    command: "logs",
    switches: &["-t", "--tail", "-q", "--quiet"],
    options: &["-n", "--num", "-p", "--ps"],
};
const DEFAULT_LINES: usize = 100;

pub fn logs(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&LOGS, args, ctx.app.as_deref())?;
    let app = ctx.require_app(parsed.positionals.first())?;
    if !deploy::is_deployed(&ctx.store, &app)? {
        return Err(Failure::msg(1, format!("App {app} has not been deployed")));
    }
    let num = match parsed.value("--num").or(parsed.value("-n")) {
        None => DEFAULT_LINES,
        Some(num) => num
            .parse()
            .map_err(|_| Failure::msg(1, format!("Invalid number of lines: {num}")))?,
    };
    let process = parsed.value("--ps").or(parsed.value("-p"));
    let quiet = parsed.has("-q") || parsed.has("--quiet");
    let lines: Vec<String> = ctx
        .store
        .read_log(&app)?
        .into_iter()
        .filter(|line| process.is_none_or(|process| line.contains(&format!(" app[{process}."))))
        .collect();
    // `-n 0` shows everything.
    let skip = if num == 0 {
        0
    } else {
        lines.len().saturating_sub(num)
    };
    for line in lines.iter().skip(skip) {
        let text = match line.split_once("]: ") {
            Some((_, message)) if quiet => message,
            _ => line,
        };
        ctx.out.line(text);
    }
    Ok(())
}
