//! A minimal passive-mode FTP client, the same for both servers: login, then per file
//! PASV, STOR to a temporary name, RNFR/RNTO to the final one — what field software
//! does. Blocking sockets and one connection: the servers' per-file latency is what
//! decides the rate.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, ensure, Context};

pub struct FtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl FtpClient {
    pub fn login(addr: SocketAddr, user: &str, password: &str) -> anyhow::Result<FtpClient> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut client = FtpClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        client.expect_reply(220)?;
        let (code, text) = client.command(&format!("USER {user}"))?;
        if code == 331 {
            client.expect(&format!("PASS {password}"), 230)?;
        } else {
            ensure!(code == 230, "USER: {code} {text}");
        }
        client.expect("TYPE I", 200)?;
        Ok(client)
    }

    /// Uploads `data` as `temp`, then renames it to `name`.
    pub fn put_then_rename(&mut self, data: &[u8], temp: &str, name: &str) -> anyhow::Result<()> {
        let target = self.passive()?;
        let mut conn =
            TcpStream::connect(target).with_context(|| format!("data connection to {target}"))?;
        let (code, text) = self.command(&format!("STOR {temp}"))?;
        ensure!(code == 150 || code == 125, "STOR {temp}: {code} {text}");
        conn.write_all(data)?;
        drop(conn);
        self.expect_reply(226)?;
        self.expect(&format!("RNFR {temp}"), 350)?;
        self.expect(&format!("RNTO {name}"), 250)?;
        Ok(())
    }

    pub fn quit(mut self) {
        let _ = self.command("QUIT");
    }

    fn passive(&mut self) -> anyhow::Result<SocketAddr> {
        let text = self.expect("PASV", 227)?;
        let inner = text
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(i, _)| i)
            .with_context(|| format!("no address in the PASV reply {text:?}"))?;
        let n: Vec<u8> = inner
            .split(',')
            .map(|p| p.trim().parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("bad PASV reply {text:?}"))?;
        ensure!(n.len() == 6, "bad PASV reply {text:?}");
        let ip = Ipv4Addr::new(n[0], n[1], n[2], n[3]);
        Ok(SocketAddr::from((
            ip,
            u16::from(n[4]) << 8 | u16::from(n[5]),
        )))
    }

    fn expect(&mut self, line: &str, want: u16) -> anyhow::Result<String> {
        let (code, text) = self.command(line)?;
        let shown = if line.starts_with("PASS") {
            "PASS ***"
        } else {
            line
        };
        ensure!(code == want, "{shown}: expected {want}, got {code} {text}");
        Ok(text)
    }

    fn command(&mut self, line: &str) -> anyhow::Result<(u16, String)> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }

    fn expect_reply(&mut self, want: u16) -> anyhow::Result<String> {
        let (code, text) = self.reply()?;
        ensure!(code == want, "expected {want}, got {code} {text}");
        Ok(text)
    }

    /// One reply, multi-line ones (`123-…` up to `123 …`) included.
    fn reply(&mut self) -> anyhow::Result<(u16, String)> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("the server closed the control connection");
        }
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("not an FTP reply: {line:?}"))?;
        let mut text = line.clone();
        if line.as_bytes().get(3) == Some(&b'-') {
            let end = format!("{code} ");
            for _ in 0..1000 {
                line.clear();
                if self.reader.read_line(&mut line)? == 0 {
                    bail!("the server closed the control connection mid-reply");
                }
                text.push_str(&line);
                if line.starts_with(&end) {
                    break;
                }
            }
        }
        Ok((code, text.trim_end().to_string()))
    }
}
