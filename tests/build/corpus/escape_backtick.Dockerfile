# escape=`
FROM mcr.microsoft.com/windows/servercore:ltsc2022
SHELL ["powershell", "-Command", "$ErrorActionPreference = 'Stop';"]
RUN Write-Host hello; `
    Write-Host world
COPY C:\src\app C:\app
WORKDIR C:\app
ENV PATH="C:\app;${PATH}"
CMD ["C:\\app\\app.exe"]
