package ui

import (
	"context"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// cookieName holds the session id.
const cookieName = "berth_session"

// sessionOf returns the request's live session, or nil.
func (s *Server) sessionOf(r *http.Request) *session {
	c, err := r.Cookie(cookieName)
	if err != nil || len(c.Value) != 32 {
		return nil
	}
	return s.sessions.get(c.Value, time.Now())
}

// page wraps a page: without a session, the browser goes to /login.
func (s *Server) page(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sess := s.sessionOf(r)
		if sess == nil {
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		h(w, r, sess)
	}
}

// api wraps a read endpoint: without a session, 401 in JSON.
func (s *Server) api(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sess := s.sessionOf(r)
		if sess == nil {
			writeError(w, http.StatusUnauthorized, "Unauthenticated", "not logged in")
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		h(w, r, sess)
	}
}

// action wraps a state-changing endpoint: POST (the mux sees to it), a
// session, a same-origin Origin header and the session's CSRF token in
// X-CSRF-Token. A cookie alone (which a browser sends along with another
// site's form) changes nothing.
func (s *Server) action(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return s.api(func(w http.ResponseWriter, r *http.Request, sess *session) {
		if !s.sameOrigin(r, true) {
			s.logger.Warn("state change refused: Origin is not this dashboard", "origin", r.Header.Get("Origin"), "from", r.RemoteAddr, "path", r.URL.Path)
			writeError(w, http.StatusForbidden, "PermissionDenied", "cross-origin request refused")
			return
		}
		if !sess.csrfOK(r.Header.Get("X-CSRF-Token")) {
			s.logger.Warn("state change refused: missing or wrong CSRF token", "from", r.RemoteAddr, "path", r.URL.Path)
			writeError(w, http.StatusForbidden, "PermissionDenied", "missing or wrong X-CSRF-Token (GET /api/whoami gives it)")
			return
		}
		h(w, r, sess)
	})
}

// sameOrigin checks the Origin header (else Referer) names this
// dashboard as the request reached it (its Host is already checked).
// required: a request without either is refused.
func (s *Server) sameOrigin(r *http.Request, required bool) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		if ref := r.Header.Get("Referer"); ref != "" {
			u, err := url.Parse(ref)
			if err != nil {
				return false
			}
			origin = u.Scheme + "://" + u.Host
		}
	}
	if origin == "" {
		return !required
	}
	scheme := "http"
	if s.cfg.TLS != nil {
		scheme = "https"
	}
	return strings.EqualFold(origin, scheme+"://"+r.Host)
}

var loginTemplate = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Berth: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/assets/login.css"></head>
<body><main class="login">
<h1>Berth</h1>
{{if .Error}}<p class="error" role="alert">{{.Error}}</p>{{end}}
<form method="post" action="/login">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="off" autofocus required>
<button type="submit">Log in</button>
</form>
<p class="hint">A token from <code>berth token create --role viewer</code> (or deployer, admin),
or the one in the admin CLI configuration the server wrote (<code>token:</code>).
<code>berth dev</code> prints a link that logs in at once.</p>
</main></body></html>
`))

func (s *Server) loginForm(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = loginTemplate.Execute(w, struct{ Error string }{msg})
}

// loginPage shows the form, or logs in with ?token= (the link `berth
// dev` prints).
func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	tok := r.URL.Query().Get("token")
	if tok == "" {
		if s.sessionOf(r) != nil {
			http.Redirect(w, r, "/", http.StatusSeeOther)
			return
		}
		s.loginForm(w, http.StatusOK, "")
		return
	}
	// Login CSRF through the link: another site's page (a link, a
	// redirect, window.open) must not log the browser in as its user. A
	// browser says where a navigation came from in Sec-Fetch-Site: the
	// link `berth dev` prints, opened from a terminal, is "none".
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		s.logger.Warn("login refused: the login link was opened from another site", "sec_fetch_site", site, "from", r.RemoteAddr)
		s.loginForm(w, http.StatusForbidden, "Cross-site login refused: open the link from your terminal, or paste the token here.")
		return
	}
	s.login(w, r, tok)
}

func (s *Server) loginPost(w http.ResponseWriter, r *http.Request) {
	// Login CSRF: another site must not log a browser in as its own user.
	if !s.sameOrigin(r, false) {
		s.logger.Warn("login refused: Origin is not this dashboard", "origin", r.Header.Get("Origin"), "from", r.RemoteAddr)
		s.loginForm(w, http.StatusForbidden, "Cross-origin login refused.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		s.loginForm(w, http.StatusBadRequest, "The form could not be read.")
		return
	}
	s.login(w, r, r.PostForm.Get("token"))
}

// login checks the token against the API (the Version call answers any
// user and names the caller) and starts a session. The token is never
// logged nor echoed.
func (s *Server) login(w http.ResponseWriter, r *http.Request, tok string) {
	if !s.logins.allow(r.RemoteAddr, time.Now()) {
		s.metrics.logins.WithLabelValues("limited").Inc()
		s.logger.Warn("login refused: too many attempts", "from", r.RemoteAddr)
		w.Header().Set("Retry-After", "2")
		s.loginForm(w, http.StatusTooManyRequests, "Too many login attempts from your address: wait a few seconds.")
		return
	}
	tok = strings.TrimSpace(tok)
	if tok == "" || len(tok) > 512 {
		s.metrics.logins.WithLabelValues("refused").Inc()
		s.loginForm(w, http.StatusUnauthorized, "That is not a Berth API token.")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	v, err := s.cfg.API.Version(ctx, &pb.VersionRequest{}, pb.TokenCall(tok))
	if err != nil {
		code := status.Code(err)
		if code == codes.Unauthenticated || code == codes.PermissionDenied {
			s.metrics.logins.WithLabelValues("refused").Inc()
			s.logger.Info("login refused", "from", r.RemoteAddr, "reason", status.Convert(err).Message())
			s.loginForm(w, http.StatusUnauthorized, "The API refused that token: "+status.Convert(err).Message())
			return
		}
		s.metrics.logins.WithLabelValues("error").Inc()
		s.logger.Warn("login: the API did not answer", "err", err)
		s.loginForm(w, http.StatusServiceUnavailable, "The Berth API did not answer: "+status.Convert(err).Message())
		return
	}
	if !strings.Contains(v.Caller, " token ") {
		// The API token of a user names itself "admin token ID ...": a
		// part's identity cannot come this way, but check.
		s.loginForm(w, http.StatusUnauthorized, "That is not a user's API token.")
		return
	}
	if old := s.sessionOf(r); old != nil {
		s.sessions.drop(old.id) // a new login gets a new id (no fixation)
	}
	sess := s.sessions.create(tok, v.Caller, time.Now())
	s.metrics.logins.WithLabelValues("ok").Inc()
	s.metrics.sessions.Set(float64(s.sessions.len()))
	s.logger.Info("logged in", "principal", sess.principal, "from", r.RemoteAddr)
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: sess.id, Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: s.cfg.TLS != nil,
		Expires: sess.expires,
	})
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, sess *session) {
	s.sessions.drop(sess.id)
	s.metrics.sessions.Set(float64(s.sessions.len()))
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: s.cfg.TLS != nil})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}
