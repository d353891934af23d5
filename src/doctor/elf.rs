//! What a SPANK plugin says about itself, read from its ELF file without loading it (loading
//! would run its constructors): the symbols every Slurm plugin exports, `plugin_name` (a
//! string) and `plugin_version` (the `SLURM_VERSION_NUMBER` of the headers it was built
//! with: slurmstepd loads it only when major.minor is its own), and whether it has a
//! `slurm_spank_task_init_privileged` callback (which runs as root in each task).

use std::io;

/// Reads bytes at an offset (a file, or bytes in memory in the tests).
pub trait ReadAt {
    /// `len` bytes at `offset`.
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        self.get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }
}

/// A plugin's self-description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Symbols {
    /// `plugin_name`.
    pub name: Option<String>,
    /// `plugin_version`: `SLURM_VERSION_NUMBER` (0xMMmmpp) of the headers, major.minor kept.
    pub version: Option<u32>,
    /// It exports `slurm_spank_task_init_privileged`.
    pub task_init_privileged: bool,
}

/// `0x160500` as `22.05`.
pub fn major_minor(version: u32) -> String {
    format!("{}.{:02}", version >> 16, (version >> 8) & 0xff)
}

const SHT_NOBITS: u32 = 8;
const SHT_DYNSYM: u32 = 11;

#[derive(Clone, Copy)]
struct Section {
    kind: u32,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

fn cstr(b: &[u8], at: usize) -> &[u8] {
    let rest = b.get(at..).unwrap_or_default();
    &rest[..rest.iter().position(|c| *c == 0).unwrap_or(rest.len())]
}

/// Reads a 64-bit little-endian ELF file's dynamic symbols.
pub fn spank_symbols(src: &dyn ReadAt) -> Result<Symbols, String> {
    let err = |e: io::Error| format!("cannot read it as an ELF file: {e}");
    let hdr = src.read_at(0, 64).map_err(err)?;
    if &hdr[..4] != b"\x7fELF" {
        return Err("it is not an ELF file".into());
    }
    if hdr[4] != 2 || hdr[5] != 1 {
        return Err("it is not a 64-bit little-endian ELF file".into());
    }
    let (shoff, shentsize, shnum) = (
        u64_at(&hdr, 0x28),
        usize::from(u16_at(&hdr, 0x3a)),
        usize::from(u16_at(&hdr, 0x3c)),
    );
    if shentsize != 64 || shnum == 0 {
        return Err("its ELF section headers are not readable".into());
    }
    let table = src.read_at(shoff, shentsize * shnum).map_err(err)?;
    let sections: Vec<Section> = table
        .chunks_exact(64)
        .map(|s| Section {
            kind: u32_at(s, 4),
            addr: u64_at(s, 16),
            offset: u64_at(s, 24),
            size: u64_at(s, 32),
            link: u32_at(s, 40),
        })
        .collect();
    let dynsym = sections
        .iter()
        .find(|s| s.kind == SHT_DYNSYM)
        .ok_or("it has no dynamic symbol table")?;
    let strtab = sections
        .get(dynsym.link as usize)
        .ok_or("its dynamic symbol table names no string table")?;
    let bounded = |s: &Section, max: u64| -> Result<Vec<u8>, String> {
        if s.size > max {
            return Err("its dynamic symbol table is implausibly large".into());
        }
        src.read_at(s.offset, s.size as usize).map_err(err)
    };
    let syms = bounded(dynsym, 64 << 20)?;
    let strs = bounded(strtab, 64 << 20)?;
    let mut found = Symbols::default();
    for sym in syms.chunks_exact(24) {
        let (name, shndx, value, size) = (
            cstr(&strs, u32_at(sym, 0) as usize),
            usize::from(u16_at(sym, 6)),
            u64_at(sym, 8),
            u64_at(sym, 16),
        );
        // Undefined (0) or special (ABS, COMMON: 0xfff1 and up) sections hold no data here.
        let section = (shndx != 0).then(|| sections.get(shndx)).flatten();
        let data = |len: u64| -> Option<Vec<u8>> {
            let s = section.filter(|s| s.kind != SHT_NOBITS)?;
            let at = value.checked_sub(s.addr)?.checked_add(s.offset)?;
            src.read_at(at, usize::try_from(len.min(256)).ok()?).ok()
        };
        match name {
            b"plugin_name" => {
                found.name = data(size).map(|b| String::from_utf8_lossy(cstr(&b, 0)).into_owned())
            }
            b"plugin_version" if size == 4 => found.version = data(4).map(|b| u32_at(&b, 0)),
            b"slurm_spank_task_init_privileged" if shndx != 0 => found.task_init_privileged = true,
            _ => {}
        }
    }
    Ok(found)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 file with a dynamic symbol table and a data section holding the given
    /// symbols (name, bytes); `undefined` names are listed without a section.
    pub(crate) fn elf(symbols: &[(&str, &[u8])], undefined: &[&str]) -> Vec<u8> {
        let mut strs = vec![0u8];
        let mut data = Vec::new();
        let mut syms = vec![0u8; 24]; // the null symbol
        let data_addr = 0x4000u64;
        let mut add = |name: &str, shndx: u16, value: u64, size: u64, strs: &mut Vec<u8>| {
            let at = strs.len() as u32;
            strs.extend_from_slice(name.as_bytes());
            strs.push(0);
            let mut s = Vec::new();
            s.extend_from_slice(&at.to_le_bytes());
            s.extend_from_slice(&[0x11, 0]);
            s.extend_from_slice(&shndx.to_le_bytes());
            s.extend_from_slice(&value.to_le_bytes());
            s.extend_from_slice(&size.to_le_bytes());
            syms.extend_from_slice(&s);
        };
        for (name, bytes) in symbols {
            let value = data_addr + data.len() as u64;
            data.extend_from_slice(bytes);
            add(name, 3, value, bytes.len() as u64, &mut strs);
        }
        for name in undefined {
            add(name, 0, 0, 0, &mut strs);
        }
        let mut file = vec![0u8; 64];
        let strs_off = file.len() as u64;
        file.extend_from_slice(&strs);
        let syms_off = file.len() as u64;
        file.extend_from_slice(&syms);
        let data_off = file.len() as u64;
        file.extend_from_slice(&data);
        let shoff = file.len() as u64;
        let section = |kind: u32, addr: u64, off: u64, size: u64, link: u32| {
            let mut s = vec![0u8; 64];
            s[4..8].copy_from_slice(&kind.to_le_bytes());
            s[16..24].copy_from_slice(&addr.to_le_bytes());
            s[24..32].copy_from_slice(&off.to_le_bytes());
            s[32..40].copy_from_slice(&size.to_le_bytes());
            s[40..44].copy_from_slice(&link.to_le_bytes());
            s
        };
        file.extend(section(0, 0, 0, 0, 0));
        file.extend(section(3, 0, strs_off, strs.len() as u64, 0));
        file.extend(section(SHT_DYNSYM, 0, syms_off, syms.len() as u64, 1));
        file.extend(section(1, data_addr, data_off, data.len() as u64, 0));
        file[..4].copy_from_slice(b"\x7fELF");
        file[4] = 2;
        file[5] = 1;
        file[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        file[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        file[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
        file
    }

    #[test]
    fn name_version_and_callbacks_are_read_from_the_dynamic_symbols() {
        let file = elf(
            &[
                ("plugin_name", b"mnd_spank\0"),
                ("plugin_version", &0x160500u32.to_le_bytes()),
                ("slurm_spank_task_init_privileged", &[0xc3]),
            ],
            &["spank_getenv"],
        );
        let s = spank_symbols(&file).unwrap();
        assert_eq!(s.name.as_deref(), Some("mnd_spank"));
        assert_eq!(s.version.map(major_minor).as_deref(), Some("22.05"));
        assert!(s.task_init_privileged);
        // A plugin that only imports the callback's name does not have it.
        let file = elf(
            &[("plugin_version", &0x180b00u32.to_le_bytes())],
            &["slurm_spank_task_init_privileged"],
        );
        let s = spank_symbols(&file).unwrap();
        assert_eq!(s.version.map(major_minor).as_deref(), Some("24.11"));
        assert!(!s.task_init_privileged && s.name.is_none());
    }

    #[test]
    fn other_files_are_refused_with_the_reason() {
        assert!(spank_symbols(&b"#!/bin/sh\n".to_vec())
            .unwrap_err()
            .contains("cannot read"));
        let mut text = vec![0u8; 64];
        text[..4].copy_from_slice(b"#!/b");
        assert_eq!(spank_symbols(&text).unwrap_err(), "it is not an ELF file");
        let mut file = elf(&[], &[]);
        file[4] = 1;
        assert!(spank_symbols(&file).unwrap_err().contains("64-bit"));
    }
}
