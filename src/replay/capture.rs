//! Reading pcap and pcapng files (pcap-file crate) into frames with
//! nanosecond timestamps.
//!
//! pcap-file's checked packet type refuses records whose original length
//! exceeds the snap length, which every capture taken with `tcpdump -s N`
//! contains; raw records are read instead and checked here. pcapng
//! timestamps are converted with each interface's `if_tsresol` and
//! `if_tsoffset`, which pcap-file leaves to the caller.

use super::link::{link_type_name, Link};
use super::ReplayError;
use pcap_file::pcap::{PcapHeader, PcapReader};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, PcapError, TsResolution};
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One captured frame, borrowed from the reader.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Digits after the decimal point the capture's clock has (6 or 9).
    pub decimals: u8,
    /// Length on the wire; at least `data.len()` when the file is sane.
    pub orig_len: u32,
    pub data: &'a [u8],
    pub datalink: DataLink,
    pub link: Link,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Pcap,
    PcapNg,
}

/// What a pcapng interface description says that frames need.
#[derive(Clone, Copy, Debug)]
struct Iface {
    datalink: DataLink,
    link: Result<Link, ()>,
    snaplen: u32,
    /// Timestamp units: `Ok(n)` for 10^-n s, `Err(n)` for 2^-n s.
    resolution: Result<u8, u8>,
    offset_secs: i64,
}

impl Iface {
    fn new(idb: &InterfaceDescriptionBlock<'_>) -> Iface {
        let mut resolution = Ok(6);
        let mut offset_secs = 0;
        for option in &idb.options {
            match option {
                InterfaceDescriptionOption::IfTsResol(r) => {
                    resolution = if r & 0x80 == 0 { Ok(*r) } else { Err(r & 0x7f) };
                }
                InterfaceDescriptionOption::IfTsOffset(o) => offset_secs = *o as i64,
                _ => {}
            }
        }
        Iface {
            datalink: idb.linktype,
            link: Link::from_datalink(idb.linktype).map_err(|_| ()),
            snaplen: idb.snaplen,
            resolution,
            offset_secs,
        }
    }

    fn decimals(self) -> u8 {
        match self.resolution {
            Ok(n) if n <= 6 => 6,
            _ => 9,
        }
    }

    /// Raw timestamp units to nanoseconds since the epoch (saturating).
    fn nanos(self, units: u64) -> u64 {
        let units = units as u128;
        let ns = match self.resolution {
            Ok(n) if n <= 9 => units * 10u128.pow(9 - n as u32),
            Ok(n) => units / 10u128.pow((n as u32).min(38) - 9),
            Err(n) => (units * 1_000_000_000) >> (n as u32).min(127),
        };
        let ns = ns as i128 + self.offset_secs as i128 * 1_000_000_000;
        ns.clamp(0, u64::MAX as i128) as u64
    }
}

enum Inner {
    Pcap {
        reader: PcapReader<File>,
        header: PcapHeader,
        link: Link,
    },
    PcapNg {
        reader: PcapNgReader<File>,
        ifaces: Vec<Iface>,
        /// Time of the previous packet, for Simple Packet Blocks (which carry none).
        last_ns: u64,
        /// The current frame's bytes (copied out of the reader's buffer).
        buf: Vec<u8>,
    },
}

/// An open capture file.
pub struct Capture {
    path: PathBuf,
    inner: Inner,
    /// Frames read so far (for error messages).
    frames: u64,
}

impl Capture {
    pub fn open(path: &Path) -> Result<Capture, ReplayError> {
        let io = |source| ReplayError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(|source| ReplayError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match file.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        if got < 4 {
            return Err(ReplayError::NotACapture {
                path: path.to_path_buf(),
                detail: format!("only {got} bytes long"),
            });
        }
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let format = match u32::from_be_bytes(magic) {
            0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 => Format::Pcap,
            0x0a0d_0d0a => Format::PcapNg,
            other => {
                return Err(ReplayError::NotACapture {
                    path: path.to_path_buf(),
                    detail: format!("unknown magic number 0x{other:08x}"),
                })
            }
        };
        let inner = match format {
            Format::Pcap => {
                let reader = PcapReader::new(file)
                    .map_err(|e| ReplayError::from_pcap(path, 0, e, "the pcap file header"))?;
                let header = reader.header();
                let link = Link::from_datalink(header.datalink).map_err(|name| {
                    ReplayError::UnsupportedLinkType {
                        path: path.to_path_buf(),
                        name,
                    }
                })?;
                Inner::Pcap {
                    reader,
                    header,
                    link,
                }
            }
            Format::PcapNg => Inner::PcapNg {
                reader: PcapNgReader::new(file)
                    .map_err(|e| ReplayError::from_pcap(path, 0, e, "the pcapng section header"))?,
                ifaces: Vec::new(),
                last_ns: 0,
                buf: Vec::new(),
            },
        };
        Ok(Capture {
            path: path.to_path_buf(),
            inner,
            frames: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        match self.inner {
            Inner::Pcap { .. } => Format::Pcap,
            Inner::PcapNg { .. } => Format::PcapNg,
        }
    }

    /// The pcap file header (pcap files only).
    pub fn pcap_header(&self) -> Option<PcapHeader> {
        match &self.inner {
            Inner::Pcap { header, .. } => Some(*header),
            Inner::PcapNg { .. } => None,
        }
    }

    /// Frames read so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The next frame, `None` at the end of the file.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, ReplayError>> {
        let path = &self.path;
        let after = self.frames;
        let what = "a packet record";
        let frame = match &mut self.inner {
            Inner::Pcap {
                reader,
                header,
                link,
            } => {
                let raw = match reader.next_raw_packet()? {
                    Ok(raw) => raw,
                    Err(e) => return Some(Err(ReplayError::from_pcap(path, after, e, what))),
                };
                let (per_sec, decimals) = match header.ts_resolution {
                    TsResolution::MicroSecond => (1_000_000u64, 6),
                    TsResolution::NanoSecond => (1_000_000_000u64, 9),
                };
                let corrupt = |detail: String| {
                    Some(Err(ReplayError::Corrupt {
                        path: path.clone(),
                        after,
                        detail,
                    }))
                };
                if raw.ts_frac as u64 >= per_sec {
                    return corrupt(format!(
                        "record {} has a fractional timestamp of {} (at most {} allowed)",
                        after + 1,
                        raw.ts_frac,
                        per_sec - 1
                    ));
                }
                if raw.incl_len > raw.orig_len {
                    return corrupt(format!(
                        "record {} has {} captured bytes of a {}-byte packet",
                        after + 1,
                        raw.incl_len,
                        raw.orig_len
                    ));
                }
                let ts_ns = raw.ts_sec as u64 * 1_000_000_000
                    + raw.ts_frac as u64 * (1_000_000_000 / per_sec);
                // `raw` borrows the reader's buffer; re-borrow its data for the frame.
                let (orig_len, data) = (raw.orig_len, raw.data);
                let data: &[u8] = match data {
                    std::borrow::Cow::Borrowed(d) => d,
                    std::borrow::Cow::Owned(_) => {
                        unreachable!("pcap-file hands out borrowed packet data")
                    }
                };
                Frame {
                    ts_ns,
                    decimals,
                    orig_len,
                    data,
                    datalink: header.datalink,
                    link: *link,
                }
            }
            Inner::PcapNg {
                reader,
                ifaces,
                last_ns,
                buf,
            } => {
                let (ts_ns, decimals, orig_len, datalink, link) = loop {
                    let block = match reader.next_block()? {
                        Ok(block) => block,
                        Err(e) => {
                            return Some(Err(ReplayError::from_pcap(path, after, e, "a block")))
                        }
                    };
                    let (iface_id, units, orig_len, data) = match block {
                        Block::SectionHeader(_) => {
                            ifaces.clear();
                            continue;
                        }
                        Block::InterfaceDescription(idb) => {
                            ifaces.push(Iface::new(&idb));
                            continue;
                        }
                        Block::EnhancedPacket(epb) => (
                            epb.interface_id,
                            Some(epb.timestamp.as_nanos() as u64),
                            epb.original_len,
                            epb.data,
                        ),
                        Block::Packet(pb) => (
                            pb.interface_id as u32,
                            Some(pb.timestamp),
                            pb.original_len,
                            pb.data,
                        ),
                        Block::SimplePacket(spb) => (0, None, spb.original_len, spb.data),
                        _ => continue,
                    };
                    let Some(iface) = ifaces.get(iface_id as usize) else {
                        return Some(Err(ReplayError::Corrupt {
                        path: path.clone(),
                        after,
                        detail: format!(
                            "packet {} refers to interface {iface_id}, which no interface description block defines",
                            after + 1
                        ),
                    }));
                    };
                    let Ok(link) = iface.link else {
                        return Some(Err(ReplayError::UnsupportedLinkType {
                            path: path.clone(),
                            name: link_type_name(iface.datalink),
                        }));
                    };
                    let data: &[u8] = match data {
                        std::borrow::Cow::Borrowed(d) => d,
                        std::borrow::Cow::Owned(_) => {
                            unreachable!("pcap-file hands out borrowed packet data")
                        }
                    };
                    let data = match units {
                        Some(_) => data,
                        // A Simple Packet Block's data runs to the block's end, padding
                        // included: cut it to the packet and the snap length.
                        None => {
                            let mut len = (orig_len as usize).min(data.len());
                            if iface.snaplen > 0 {
                                len = len.min(iface.snaplen as usize);
                            }
                            &data[..len]
                        }
                    };
                    let ts_ns = match units {
                        Some(u) => iface.nanos(u),
                        None => *last_ns,
                    };
                    *last_ns = ts_ns;
                    buf.clear();
                    buf.extend_from_slice(data);
                    break (ts_ns, iface.decimals(), orig_len, iface.datalink, link);
                };
                Frame {
                    ts_ns,
                    decimals,
                    orig_len,
                    data: buf,
                    datalink,
                    link,
                }
            }
        };
        self.frames += 1;
        Some(Ok(frame))
    }
}

impl ReplayError {
    fn from_pcap(path: &Path, after: u64, e: PcapError, what: &str) -> ReplayError {
        let path = path.to_path_buf();
        match e {
            PcapError::IoError(source) if source.kind() == ErrorKind::UnexpectedEof => {
                ReplayError::Truncated {
                    path,
                    after,
                    what: what.to_string(),
                }
            }
            PcapError::IoError(source) => ReplayError::Io { path, source },
            other => ReplayError::Corrupt {
                path,
                after,
                detail: format!("in {what}: {other}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(resolution: Result<u8, u8>, offset_secs: i64) -> Iface {
        Iface {
            datalink: DataLink::ETHERNET,
            link: Ok(Link::Ethernet),
            snaplen: 0,
            resolution,
            offset_secs,
        }
    }

    #[test]
    fn pcapng_timestamp_units() {
        assert_eq!(iface(Ok(6), 0).nanos(1_500_000), 1_500_000_000);
        assert_eq!(iface(Ok(9), 0).nanos(7), 7);
        assert_eq!(iface(Ok(3), 0).nanos(2), 2_000_000);
        assert_eq!(iface(Ok(12), 0).nanos(5_000), 5);
        assert_eq!(iface(Err(10), 0).nanos(1024), 1_000_000_000);
        assert_eq!(iface(Ok(6), 10).nanos(1), 10_000_001_000);
        assert_eq!(iface(Ok(6), -10).nanos(1), 0);
        assert_eq!(iface(Ok(6), 0).decimals(), 6);
        assert_eq!(iface(Ok(9), 0).decimals(), 9);
    }
}
