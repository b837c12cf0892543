# Runs FTP operations given as JSON with Python's ftplib; prints one JSON result per
# operation: {"ok": ...} or {"err": "550 ..."}. `login` opens a fresh connection.
# Used by the tests through ctdata_tests::ftp::ftplib.
import ftplib, io, json, os, sys
port, tls, ops = int(sys.argv[1]), sys.argv[2] == "tls", json.loads(sys.argv[3])
ftp = None
def run(op):
    global ftp
    kind, a = op[0], op[1:]
    if kind == "login":
        if ftp is not None:
            ftp.close()
        ftp = (ftplib.FTP_TLS if tls else ftplib.FTP)()
        ftp.connect("127.0.0.1", port, timeout=20)
        r = ftp.login(a[0], a[1])
        if tls:
            ftp.prot_p()
        return r
    if kind == "again":
        # Logs in once more on the same connection (after a refused login, say).
        return ftp.login(a[0], a[1])
    if kind == "stor":
        with open(a[0], "rb") as f:
            return ftp.storbinary("STOR " + a[1], f)
    if kind == "stor_then_die":
        # Sends half of the file, then dies the hard way mid-transfer.
        data = open(a[0], "rb").read()
        conn = ftp.transfercmd("STOR " + a[1])
        conn.sendall(data[: len(data) // 2])
        print(json.dumps([{"ok": "half sent"}]), flush=True)
        os.kill(os.getpid(), 9)
    if kind == "stor_then_stall":
        # Sends half of the file, then nothing, keeping the connection open.
        data = open(a[0], "rb").read()
        conn = ftp.transfercmd("STOR " + a[1])
        conn.sendall(data[: len(data) // 2])
        return ftp.getresp()
    if kind == "idle":
        import time
        time.sleep(float(a[0]))
        return ftp.sendcmd("NOOP")
    if kind == "rename":
        return ftp.rename(a[0], a[1])
    if kind == "retr":
        buf = io.BytesIO()
        ftp.retrbinary("RETR " + a[0], buf.write)
        return buf.getvalue().decode("latin-1")
    if kind == "list":
        lines = []
        ftp.retrlines("LIST " + a[0] if a else "LIST", lines.append)
        return lines
    if kind == "cmd":
        return ftp.sendcmd(a[0])
    if kind == "cwd":
        return ftp.cwd(a[0])
    if kind == "mkd":
        return ftp.mkd(a[0])
    if kind == "delete":
        return ftp.delete(a[0])
    if kind == "active":
        ftp.set_pasv(False)
        return "active"
    raise ValueError(kind)
out = []
for op in ops:
    try:
        out.append({"ok": run(op)})
    except ftplib.all_errors as e:
        out.append({"err": str(e)})
print(json.dumps(out))
