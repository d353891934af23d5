//! mnd-srun: runs Docker containers across the nodes of a Slurm allocation for multi-node
//! training. The pure core (`hostlist`, `slurm`, `cli`, `config`, `dockopts`, `plan`) decides
//! everything; thin modules talk to the outside (`identity`, `ssh`, `docker`, `probe`,
//! `control`, `signals`) and `launch` runs the coordinator and worker state machines.

pub mod accounts;
pub mod asuser;
pub mod cdi;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod control;
pub mod direct;
pub mod directshare;
pub mod docker;
pub mod dockopts;
pub mod doctor;
pub mod error;
pub mod fsx;
pub mod hostlist;
pub mod hosts;
pub mod identity;
pub mod imagearchive;
pub mod imagecache;
pub mod imagefiles;
pub mod initprog;
pub mod jobtools;
pub mod launch;
pub mod listening;
pub mod manpage;
pub mod munge;
pub mod netif;
pub mod node;
pub mod ownedroot;
pub mod pathid;
pub mod phases;
pub mod pidfd;
pub mod plan;
pub mod probe;
pub mod pulled;
pub mod signals;
pub mod slurm;
pub mod spank;
pub mod spec;
pub mod ssh;
pub mod stepsave;
pub mod terminal;
pub mod tree;
