//! The script's `docker exec` on the first node. Without a terminal it is started as soon as
//! the container runs, held at a gate (its shell waits for one line on stdin): the exec's
//! start then overlaps the wait for sshd and for the other nodes, and the script begins the
//! moment the launcher opens the gate. With a terminal (`srun --pty`) the line would echo,
//! so the exec starts when the script is due.

use crate::docker::{DockerError, Engine, Started};
use crate::plan::Plan;
use crate::terminal;
use tokio::sync::mpsc;

/// The script's exec in this node's container.
pub(super) struct ScriptExec {
    /// The exec (its output is forwarded while `io` is awaited).
    pub started: Started,
    /// Whether it has a terminal.
    pub tty: bool,
    /// The gate: the go line, then the launcher's stdin, go through it.
    gate: Option<mpsc::Sender<Vec<u8>>>,
}

/// The gate: one line read, then the script in the shell's place (same pid, same stdin).
const GATE: &str = "read -r _ || exit 0; exec \"$0\" \"$@\"";

/// Whether the script's stdin is the launcher's: in hosts mode stdin is the front door's
/// lifeline, not the script's.
fn takes_stdin(plan: &Plan) -> bool {
    !plan.hosts_mode
}

/// Whether the script gets a terminal: the launcher's stdin is its, and a terminal.
fn gets_terminal(plan: &Plan) -> bool {
    takes_stdin(plan) && terminal::stdin_is_terminal()
}

/// Whether this launcher starts the script early, behind the gate: the coordinator (the one
/// launcher with a script), when the script gets no terminal.
pub(super) fn starts_gated(plan: &Plan) -> bool {
    plan.script.is_some() && !gets_terminal(plan)
}

/// The script's command line.
fn command(plan: &Plan) -> Vec<String> {
    let script = plan.script.as_ref().expect("coordinator has a script");
    let mut cmd = vec![script.path.display().to_string()];
    cmd.extend(script.args.iter().cloned());
    cmd
}

/// Starts the script's exec behind the gate; nothing of the script runs before `open`.
pub(super) async fn start_gated(plan: &Plan, engine: &Engine) -> Result<ScriptExec, DockerError> {
    let mut cmd = vec!["/bin/sh".to_string(), "-c".to_string(), GATE.to_string()];
    cmd.extend(command(plan));
    let (gate, input) = mpsc::channel(16);
    let started = exec(plan, engine, cmd, false, Some(input)).await?;
    Ok(ScriptExec {
        started,
        tty: false,
        gate: Some(gate),
    })
}

/// Starts the script's exec now, with a terminal when the launcher's stdin is one.
pub(super) async fn start_now(plan: &Plan, engine: &Engine) -> Result<ScriptExec, DockerError> {
    let tty = gets_terminal(plan);
    let stdin = takes_stdin(plan).then(terminal::stdin_chunks);
    let started = exec(plan, engine, command(plan), tty, stdin).await?;
    Ok(ScriptExec {
        started,
        tty,
        gate: None,
    })
}

async fn exec(
    plan: &Plan,
    engine: &Engine,
    cmd: Vec<String>,
    tty: bool,
    stdin: Option<mpsc::Receiver<Vec<u8>>>,
) -> Result<Started, DockerError> {
    let workdir = plan.container.workdir.display().to_string();
    engine
        .exec(
            &plan.container.name,
            &plan.container.user,
            &workdir,
            cmd,
            tty,
            stdin,
        )
        .await
}

impl ScriptExec {
    /// Lets a gated script run: the go line, then the launcher's stdin (none in hosts mode:
    /// the script's stdin ends at once). Nothing to do for an exec started without a gate.
    pub(super) fn open(&mut self, plan: &Plan) {
        let Some(gate) = self.gate.take() else {
            return;
        };
        if gate.try_send(b"go\n".to_vec()).is_err() {
            return;
        }
        if !takes_stdin(plan) {
            return;
        }
        let mut stdin = terminal::stdin_chunks();
        tokio::spawn(async move {
            while let Some(chunk) = stdin.recv().await {
                if gate.send(chunk).await.is_err() {
                    break;
                }
            }
        });
    }
}
