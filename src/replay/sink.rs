//! `--write-accepted` / `--write-dropped`: the frames of one verdict, with
//! their link layer and timestamps, in a pcap (or pcapng) file.
//!
//! The file is created before the replay starts (a bad path fails early);
//! its header is written with the first frame, so it carries that frame's
//! link type. A pcap file takes the first pcap input's header (byte order,
//! timestamp resolution, snap length): replaying a capture whose every packet
//! is accepted writes it back identical. A pcap file has one link type; for
//! captures that mix several, name the output `.pcapng`.

use super::capture::Frame;
use super::link::link_type_name;
use super::ReplayError;
use crate::reason::Verdict;
use pcap_file::pcap::{PcapHeader, PcapWriter, RawPcapPacket};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness, TsResolution};
use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

type Out = BufWriter<File>;

enum State {
    /// Created, nothing written yet.
    Pending(Out),
    Pcap(PcapWriter<Out>, DataLink),
    /// The interfaces written: link type and timestamp decimals.
    PcapNg(PcapNgWriter<Out>, Vec<(DataLink, u8)>),
    Done,
}

pub struct Sink {
    path: PathBuf,
    verdict: Verdict,
    pcapng: bool,
    template: Option<PcapHeader>,
    state: State,
}

fn default_header(datalink: DataLink) -> PcapHeader {
    PcapHeader {
        version_major: 2,
        version_minor: 4,
        ts_correction: 0,
        ts_accuracy: 0,
        snaplen: 262_144,
        datalink,
        ts_resolution: TsResolution::NanoSecond,
        endianness: Endianness::Little,
    }
}

impl Sink {
    pub fn create(path: &Path, verdict: Verdict) -> Result<Sink, ReplayError> {
        let file = File::create(path).map_err(|e| ReplayError::Write {
            path: path.to_path_buf(),
            detail: format!("cannot create: {e}"),
        })?;
        let pcapng = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("pcapng"));
        Ok(Sink {
            path: path.to_path_buf(),
            verdict,
            pcapng,
            template: None,
            state: State::Pending(BufWriter::new(file)),
        })
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// The header of a pcap input, kept from the first one.
    pub fn template(&mut self, header: Option<PcapHeader>) {
        if self.template.is_none() {
            self.template = header;
        }
    }

    /// The link type of an output already started, for empty ones.
    pub fn link_hint(&self) -> Option<DataLink> {
        match &self.state {
            State::Pcap(_, link) => Some(*link),
            State::PcapNg(_, ifaces) => ifaces.first().map(|k| k.0),
            _ => self.template.map(|h| h.datalink),
        }
    }

    fn err(&self, detail: impl std::fmt::Display) -> ReplayError {
        ReplayError::Write {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }

    fn start(&mut self, datalink: DataLink) -> Result<(), ReplayError> {
        if !matches!(self.state, State::Pending(_)) {
            return Ok(());
        }
        let State::Pending(out) = std::mem::replace(&mut self.state, State::Done) else {
            unreachable!("checked above");
        };
        self.state = if self.pcapng {
            let w =
                PcapNgWriter::with_endianness(out, Endianness::Little).map_err(|e| self.err(e))?;
            State::PcapNg(w, Vec::new())
        } else {
            let header = match self.template {
                Some(t) => PcapHeader { datalink, ..t },
                None => default_header(datalink),
            };
            let w = PcapWriter::with_header(out, header).map_err(|e| self.err(e))?;
            State::Pcap(w, datalink)
        };
        Ok(())
    }

    pub fn write(&mut self, frame: &Frame<'_>) -> Result<(), ReplayError> {
        self.start(frame.datalink)?;
        let result = match &mut self.state {
            State::Pcap(w, link) => {
                if *link != frame.datalink {
                    let detail = format!(
                        "cannot hold frames of link types {} and {} in one pcap file; \
                         name the output .pcapng",
                        link_type_name(*link),
                        link_type_name(frame.datalink)
                    );
                    return Err(self.err(detail));
                }
                let secs = frame.ts_ns / 1_000_000_000;
                let nanos = (frame.ts_ns % 1_000_000_000) as u32;
                let Ok(ts_sec) = u32::try_from(secs) else {
                    return Err(self.err("a timestamp beyond 2106 does not fit a pcap file"));
                };
                let ts_frac = match w.ts_resolution() {
                    TsResolution::MicroSecond => nanos / 1000,
                    TsResolution::NanoSecond => nanos,
                };
                w.write_raw_packet(&RawPcapPacket {
                    ts_sec,
                    ts_frac,
                    incl_len: frame.data.len() as u32,
                    orig_len: frame.orig_len,
                    data: Cow::Borrowed(frame.data),
                })
                .map(drop)
            }
            State::PcapNg(w, ifaces) => {
                // One interface per link type and clock resolution, so that
                // timestamps keep the precision they had.
                let key = (frame.datalink, frame.decimals);
                let id = match ifaces.iter().position(|k| *k == key) {
                    Some(i) => i,
                    None => {
                        let idb = InterfaceDescriptionBlock {
                            linktype: frame.datalink,
                            snaplen: 0,
                            options: vec![InterfaceDescriptionOption::IfTsResol(frame.decimals)],
                        };
                        if let Err(e) = w.write_pcapng_block(idb) {
                            return Err(self.err(e));
                        }
                        ifaces.push(key);
                        ifaces.len() - 1
                    }
                };
                let unit = 10u64.pow(9 - u32::from(frame.decimals.min(9)));
                w.write_pcapng_block(EnhancedPacketBlock {
                    interface_id: id as u32,
                    // pcap-file writes the Duration's nanoseconds as raw units.
                    timestamp: Duration::from_nanos(frame.ts_ns / unit),
                    original_len: frame.orig_len,
                    data: Cow::Borrowed(frame.data),
                    options: vec![],
                })
                .map(drop)
            }
            State::Pending(_) | State::Done => Ok(()),
        };
        result.map_err(|e| self.err(e))
    }

    /// Writes the header of an empty output and flushes.
    pub fn finish(&mut self, link: Option<DataLink>) -> Result<(), ReplayError> {
        if matches!(self.state, State::Pending(_)) {
            let link = self
                .template
                .map(|h| h.datalink)
                .or(link)
                .unwrap_or(DataLink::ETHERNET);
            self.start(link)?;
        }
        let flushed = match std::mem::replace(&mut self.state, State::Done) {
            State::Pcap(w, _) => w.into_writer().flush(),
            State::PcapNg(w, _) => w.into_inner().flush(),
            State::Pending(_) | State::Done => Ok(()),
        };
        flushed.map_err(|e| self.err(e))
    }
}
