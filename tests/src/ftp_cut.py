# FTP clients that die or cheat, for the tests in tests/ftp_integrity.rs.
#   cut PORT USER TOKEN LOCAL REMOTE BYTES HOW
#       STORs the first BYTES of LOCAL to REMOTE, then ends without a proper finish:
#       kill     the process dies (SIGKILL) mid-transfer; its kernel closes both
#                connections, control (opened first) before data
#       rst      the data connection is reset (SO_LINGER 0), then the process dies
#       ctl_rst  the control connection is reset, then the data connection is closed
#                normally (the data alone looks like a complete file)
#   hold PORT USER TOKEN LOCAL REMOTE SECONDS
#       STORs all of LOCAL to REMOTE, prints {"reply": "226 ..."} and stays connected,
#       silent, for SECONDS (the server's shutdown cuts the session meanwhile)
#   race PORT USER TOKEN SECONDS MAX PATH...
#       RETRs each PATH in turn until SECONDS pass or MAX attempts; prints
#       {"attempts": N, "read": [distinct contents read]}
import ftplib, io, json, os, signal, socket, struct, sys, time

kind, port, user, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", port, timeout=20)
ftp.login(user, token)

if kind == "cut":
    local, remote, n, how = sys.argv[5], sys.argv[6], int(sys.argv[7]), sys.argv[8]
    data = open(local, "rb").read()[:n]
    conn = ftp.transfercmd("STOR " + remote)
    conn.sendall(data)
    print(json.dumps({"sent": len(data)}), flush=True)
    linger0 = struct.pack("ii", 1, 0)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "rst":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
        conn.close()
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "ctl_rst":
        ftp.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
        ftp.file.close()  # its reference would keep the socket open
        ftp.sock.close()
        conn.close()
        os._exit(0)
    raise ValueError(how)

if kind == "hold":
    local, remote, seconds = sys.argv[5], sys.argv[6], float(sys.argv[7])
    with open(local, "rb") as f:
        reply = ftp.storbinary("STOR " + remote, f)
    print(json.dumps({"reply": reply}), flush=True)
    time.sleep(seconds)
    sys.exit(0)

if kind == "race":
    seconds, most, paths = float(sys.argv[5]), int(sys.argv[6]), sys.argv[7:]
    deadline = time.monotonic() + seconds
    attempts, read = 0, set()
    while attempts < most and time.monotonic() < deadline:
        path = paths[attempts % len(paths)]
        attempts += 1
        buf = io.BytesIO()
        try:
            ftp.retrbinary("RETR " + path, buf.write)
            read.add(buf.getvalue().decode("latin-1"))
        except ftplib.error_perm:
            pass
    print(json.dumps({"attempts": attempts, "read": sorted(read)}))
